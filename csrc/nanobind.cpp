// nanobind's own runtime, compiled into kvsaga._kvcore. setup.py puts nanobind's source
// folder on the include path, so that every source the build names is inside the project:
// setuptools refuses absolute source paths in some builds (pip --no-build-isolation).
#include <nb_combined.cpp>
