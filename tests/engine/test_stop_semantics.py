"""What ends a request and what of it the caller sees, as in vLLM 0.32: a token that ends
generation by its id (a stop token, EOS) stays in the output ids but not in the text nor the
streamed deltas; and an agent session's next raw step continues from the text returned, not
from ids the caller never saw (a stop string, an EOS). Tiny random model, scripted sampler."""

from __future__ import annotations

import pytest
import torch

from kvsaga.engine.llm import LLM
from kvsaga.engine.sampling import SamplerOutput, SamplingParams


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def scripted_llm(model_dir, scripts: list[list[int]]) -> LLM:
    """An LLM whose one running request says scripts[i] (token by token) in its i-th call."""
    llm = LLM(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20)
    eng = llm.engine
    calls: list[str] = []

    def sample(logits, params, gens=None):
        (req,) = eng.requests.values()
        if not calls or calls[-1] != req.request_id:
            calls.append(req.request_id)
        return SamplerOutput(torch.tensor([scripts[len(calls) - 1][len(req.output_ids)]]),
                             torch.zeros(1))

    eng.runner.sampler = sample
    return llm


def ids(llm: LLM, text: str) -> list[int]:
    return llm.tokenizer.encode(text, add_special_tokens=False)


def run(llm: LLM, prompt, params):
    deltas: list[str] = []
    out = llm.generate(prompt, params, on_output=lambda o: deltas.append(o.delta))[0]
    return out, "".join(deltas)


def test_a_stop_tokens_text_is_not_in_the_text_nor_the_deltas(model_dir):
    llm = scripted_llm(model_dir, [])
    script = ids(llm, "xab")
    b = script[2]
    llm = scripted_llm(model_dir, [script])
    out, streamed = run(llm, "hi", SamplingParams(max_tokens=8, temperature=0,
                                                  stop_token_ids=[b]))
    assert out.finish_reason == "stop"
    assert list(out.token_ids) == script  # (the id stays, as vLLM's token_ids and usage)
    assert out.text == streamed == "xa"
    llm.engine.manager.check_integrity()


def test_a_stop_token_after_an_incomplete_character(model_dir):
    """The bytes of half an "é", then the stop token: the text shows neither."""
    llm = scripted_llm(model_dir, [])
    e_bytes = ids(llm, "xé")
    assert len(e_bytes) == 3  # (a byte-level vocabulary without merges)
    script = e_bytes[:2] + ids(llm, "b")
    llm = scripted_llm(model_dir, [script])
    out, streamed = run(llm, "hi", SamplingParams(max_tokens=8, temperature=0,
                                                  stop_token_ids=script[2:]))
    assert out.finish_reason == "stop" and list(out.token_ids) == script
    assert out.text == streamed == "x"


def test_eos_text_is_never_shown_and_ignore_eos_goes_on(model_dir):
    llm = scripted_llm(model_dir, [])
    eos = llm.tokenizer.eos_token_ids[0]
    script = ids(llm, "x") + [eos] + ids(llm, "y")
    llm = scripted_llm(model_dir, [script, script])
    out, streamed = run(llm, "hi", SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    assert out.finish_reason == "length" and list(out.token_ids) == script
    assert out.text == streamed == "xy"
    out, streamed = run(llm, "hi", SamplingParams(max_tokens=3, temperature=0))
    assert out.finish_reason == "stop" and list(out.token_ids) == script[:2]
    assert out.text == streamed == "x"


# -- an agent session's next raw step continues from the text it returned ---------------


def test_raw_step_after_a_stop_string_continues_from_the_returned_text(model_dir):
    """ReAct: step 1 stops at "Obs:"; the agent appends "Obs: 42\\n". The model's context
    held "Obs:" twice (the generated one the caller never saw, then the agent's)."""
    probe = scripted_llm(model_dir, [])
    llm = scripted_llm(model_dir, [ids(probe, " A.\nObs: fake"), ids(probe, "</s>")])
    s = llm.session()
    a = s.generate("Q:", SamplingParams(max_tokens=16, temperature=0, stop=["Obs:"]))
    assert a.text == " A.\n" and a.finish_reason == "stop"
    held = s.context_ids
    b = s.generate("Obs: 42\n", SamplingParams(max_tokens=4, temperature=0))
    prompt = s.context_ids[: b.num_prompt_tokens]
    assert llm.tokenizer.decode(prompt) == "Q: A.\nObs: 42\n"
    # The generated "Obs:" is what the agent appended: its exact ids are reused.
    assert prompt[: len(held)] == held
    assert b.num_cached_tokens == len(held) - 1
    s.end()
    llm.engine.manager.check_integrity()


@pytest.mark.parametrize("how", ["eos", "stop_token"])
def test_raw_step_after_a_token_that_ended_it_leaves_that_token_out(model_dir, how):
    """Step 1 ends on EOS (or a stop token): step 2's prompt is step 1's prompt and shown
    text, then the new text, with no EOS (or stop token text) between; the ids step 1 left
    are reused, all but the one that ended it (which had no K/V anyway)."""
    probe = scripted_llm(model_dir, [])
    end = probe.tokenizer.eos_token_ids[0] if how == "eos" else ids(probe, "b")[0]
    llm = scripted_llm(model_dir, [ids(probe, "xa") + [end], [end]])
    s = llm.session()
    stops = [end] if how == "stop_token" else []
    a = s.generate("Q:", SamplingParams(max_tokens=8, temperature=0, stop_token_ids=stops))
    assert a.text == "xa" and a.token_ids[-1] == end
    step1 = s.context_ids
    b = s.generate(" more", SamplingParams(max_tokens=4, temperature=0, stop_token_ids=stops))
    prompt = s.context_ids[: b.num_prompt_tokens]
    assert prompt == step1[:-1] + ids(llm, " more")
    assert llm.tokenizer.decode(prompt, skip_special_tokens=False) == "<s>Q:xa more"
    assert b.num_cached_tokens == len(step1) - 1
    s.end()
    llm.engine.manager.check_integrity()


def test_a_stop_string_cut_inside_a_token_keeps_the_ids_before_it(gguf_path):
    """SmolLM2's BPE: the returned text ends inside the token that starts the stop string;
    the held text is the prompt's and the returned text, and the ids before that token are
    kept exactly (the rest is tokenized again with what follows)."""
    from kvsaga.engine.context import TokenContext, encode_continuing
    from kvsaga.engine.gguf_file import GGUFFile
    from kvsaga.engine.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(GGUFFile(gguf_path))
    prompt_text = "Q: what is 6*7?\nThought:"
    prompt = tok.encode(prompt_text, add_special_tokens=False)
    out = tok.encode(" I will call the toolbox.\nObservation: x", add_special_tokens=False)
    cut = " I will call the tool"  # (stop "box", inside the " toolbox" token)
    assert tok.decode(out[4:5]) == " toolbox"
    ctx = TokenContext.of_step(tok, prompt, prompt_text, out, cut_text=cut)
    assert ctx.held_text == prompt_text + cut
    k = ctx.kept_len - len(prompt)
    assert out[:k] == out[:4] and ctx.tail == " tool"
    nxt = encode_continuing(tok, [ctx], ctx.held_text + "Observation: 42\n", False)
    assert nxt[: ctx.kept_len] == prompt + out[:k]
    assert tok.decode(nxt) == prompt_text + cut + "Observation: 42\n"


def test_raw_step_after_a_chat_step_keeps_the_eos_that_closed_its_turn(model_dir):
    """A chat answer ended by EOS is a closed assistant turn (the template renders it so):
    a `generate` after it appends to the exact ids, EOS included, as before."""
    probe = scripted_llm(model_dir, [])
    eos = probe.tokenizer.eos_token_ids[0]
    llm = scripted_llm(model_dir, [ids(probe, "ok") + [eos], [eos]])
    s = llm.session()
    a = s.chat("hi", SamplingParams(max_tokens=8, temperature=0))
    assert a.text == "ok" and a.finish_reason == "stop"
    step1 = s.context_ids
    b = s.generate("<s>user: more</s>", SamplingParams(max_tokens=4, temperature=0))
    assert s.context_ids[: b.num_prompt_tokens] == step1 + ids(llm, "<s>user: more</s>")
    s.end()
