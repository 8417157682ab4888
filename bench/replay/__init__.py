"""bench/agent_replay.py's parts: the workload, the servers, the arms, the client and the
report (the script itself is the command line)."""
