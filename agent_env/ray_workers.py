"""Ray mode: environment workers (Ray actors) that each play a share of the episodes.

One event loop keeps a few hundred episodes busy; past that, or to put the environment's CPU work (tokenizing,
squeezing, parsing) on other cores or machines, the episodes are split across :class:`EnvWorker` actors. Every
worker builds its own :class:`~agent_env.episode.AgentEnv` from the same :class:`~agent_env.assembly.EnvSpec`, so
all of them talk to the same policy endpoint (``engine_url``: vLLM, SGLang or ``expandsearch serve-llm``), the
same retriever server and the same squeezer endpoint, where their requests are batched together::

    trajectories = run_rollouts_on_ray(spec, inputs, num_workers=4, samples_per_input=5)

Without a cluster address, ``ray.init()`` starts Ray locally. Results come back in input order, as from
:class:`~agent_env.rollout.RolloutRunner`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent_env.assembly import EnvSpec, build_env
from agent_env.episode import AgentEnv, Trajectory
from agent_env.rollout import EpisodeInput, RolloutRunner


class EnvWorker:
    """Plays episodes against the endpoints of an EnvSpec; wrapped with ``ray.remote`` by :func:`start_workers`."""

    def __init__(self, spec: EnvSpec, max_concurrency: int = 256) -> None:
        if spec.engine_url is None:
            raise ValueError("Ray workers share one policy endpoint: set EnvSpec.engine_url")
        self.spec = spec
        self.max_concurrency = max_concurrency
        self._env: AgentEnv | None = None

    async def run(self, inputs: list[EpisodeInput], samples_per_input: int = 1) -> list[dict[str, Any]]:
        if self._env is None:  # built inside the actor's own event loop, once
            self._env = await build_env(self.spec)
        runner = RolloutRunner(self._env, max_concurrency=self.max_concurrency)
        trajectories = await runner.run(inputs, samples_per_input=samples_per_input)
        return [trajectory.to_dict() for trajectory in trajectories]

    def ping(self) -> str:
        return "ok"


def split_evenly(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Contiguous shares whose sizes differ by at most one (so concatenating them restores the order)."""
    base, extra = divmod(len(items), parts)
    shares, start = [], 0
    for index in range(parts):
        size = base + (1 if index < extra else 0)
        shares.append(list(items[start : start + size]))
        start += size
    return shares


def ensure_ray(address: str | None = None, **init_options: Any) -> None:
    """Connect to the cluster at ``address``, or start Ray locally; a no-op when Ray is already running."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_options)


def start_workers(spec: EnvSpec, num_workers: int, max_concurrency: int = 256) -> list[Any]:
    """Start ``num_workers`` EnvWorker actors (Ray must be initialised)."""
    import ray

    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    remote_worker = ray.remote(num_cpus=0)(EnvWorker)  # the work is waiting on endpoints, not CPU bound
    return [remote_worker.remote(spec, max_concurrency) for _ in range(num_workers)]


def run_rollouts_on_ray(
    spec: EnvSpec,
    inputs: Sequence[EpisodeInput],
    *,
    num_workers: int = 2,
    samples_per_input: int = 1,
    workers: list[Any] | None = None,
    address: str | None = None,
) -> list[Trajectory]:
    """Play every input ``samples_per_input`` times on Ray workers; trajectories in input order.

    Pass ``workers`` (from :func:`start_workers`) to reuse actors across calls, as a trainer does each step.
    """
    import ray

    ensure_ray(address)
    workers = workers or start_workers(spec, num_workers)
    shares = split_evenly(list(inputs), len(workers))
    pending = [worker.run.remote(share, samples_per_input) for worker, share in zip(workers, shares, strict=True)]
    results = ray.get(pending)
    return [Trajectory.from_dict(data) for share in results for data in share]
