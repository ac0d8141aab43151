"""config/gunicorn.conf.py plus a cProfile of each worker, dumped to $NEXUS_PROFILE_OUT.<pid> when it exits.

Used by `python -m bench.profile --cprofile`. cProfile sees every greenlet (they share the worker's one
thread); a greenlet switched out charges the wait to the function that switched, so read self time (tottime)
of computing functions, not cumulative time of ones that wait on sockets.
"""
import os
import runpy

_config = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                      "config", "gunicorn.conf.py"))
globals().update({k: v for k, v in _config.items() if not k.startswith("__")})
_post_worker_init = _config.get("post_worker_init")
_worker_exit = _config.get("worker_exit")


def post_worker_init(worker):  # noqa: F811 - wraps the project's hook
    if _post_worker_init is not None:
        _post_worker_init(worker)
    import cProfile

    worker.nexus_profile = cProfile.Profile()
    worker.nexus_profile.enable()


def worker_exit(server, worker):  # noqa: F811
    profile = getattr(worker, "nexus_profile", None)
    if profile is not None:
        profile.disable()
        profile.dump_stats("%s.%d" % (os.environ.get("NEXUS_PROFILE_OUT", "/tmp/nexus-profile"), os.getpid()))
    if _worker_exit is not None:
        _worker_exit(server, worker)
