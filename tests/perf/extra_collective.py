"""A pytest plugin that makes every train step on several devices run one collective more: after
each update, an all-reduce of the step's loss over every device (torch: ``dist.all_reduce`` on the
rank's process group; JAX: a ``psum`` over the mesh, compiled into the step). A few bytes, no
time to speak of: what only the gate's exact numbers catch. Not a sleep, and nowhere near product
code; the benches' worker processes load it too (``-p``), where the mesh steps run.

    python scripts/bench_gate.py --base HEAD --head-plugin tests/perf/extra_collective.py
"""

from __future__ import annotations


def _torch(make_train_step):
    def wrapped(self, cfg, tcfg, compile=False):
        step = make_train_step(self, cfg, tcfg, compile=compile)

        def one_more(state, batch):
            import torch
            import torch.distributed as dist

            state, metrics = step(state, batch)
            if dist.is_initialized() and dist.get_world_size() > 1:
                loss = torch.as_tensor(metrics["loss"], dtype=torch.float32).detach().clone().reshape(1)
                dist.all_reduce(loss)
            return state, metrics

        return one_more

    return wrapped


def _jax(step_function):
    def wrapped(cfg, tcfg, mesh):
        import jax
        from jax.sharding import PartitionSpec as P

        fn = step_function(cfg, tcfg, mesh)
        if mesh.devices.size < 2:
            return fn

        def one_more(state, batch):
            state, metrics = fn(state, batch)
            total = jax.shard_map(lambda x: jax.lax.psum(x, mesh.axis_names), mesh=mesh, in_specs=P(),
                                  out_specs=P())(metrics["loss"])
            return state, {**metrics, "loss_summed_over_devices": total}

        return one_more

    return wrapped


def mtcore_worker_configure(framework: str) -> None:
    """In a bench's worker process (benches/scaling_worker.py), which runs one framework."""
    if framework == "torch":
        from mtcore.torch.backend import TorchBackend

        TorchBackend.make_train_step = _torch(TorchBackend.make_train_step)
    elif framework == "jax":
        from mtcore.jax import backend as jax_backend

        jax_backend._step_function = _jax(jax_backend._step_function)


def pytest_configure(config):
    # Imported here, not at the top: the benches' conftest sets the thread budget first.
    import mtcore

    for framework in ("torch", "jax"):
        if not mtcore.available(framework):
            mtcore_worker_configure(framework)
