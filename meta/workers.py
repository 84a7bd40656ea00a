"""Where the members' truncations run: in this process, or on Ray workers.

Both pools take the same calls from the learner:

* `run(z, iteration, members)` -> `(results, failed_members)`:
  one truncation of every member; `results` in member order;
* `score(z, tasks)` -> one record per meta-validation task, in order
  (tasks are spread over the workers);
* `get_particles()` / `set_particles(particles)` for checkpoints;
* `compute_references(specs)` -> `{key: record}`: Adam(1e-3) reference runs
  (`meta.adam_reference`), spread over the workers;
  `set_references(records)` hands them to every runner;
* `close()`.

`RayPool` is a synchronous learner's view of Ray (Moritz et al., 2018):
`workers` actors, member m always on actor `m % workers` (its particle --
the member's inner training state -- lives there between iterations). Each
iteration theta goes into the object store once (`ray.put`) and every actor
gets a reference to it and its members' ids; only the members' scalars come
back. An actor that dies mid-iteration costs that iteration's results of
its members, not the run: they are reported as failed, the actor is
restarted, and their particles begin new episodes. With `address=None` Ray
starts inside this process on this machine; otherwise it joins the cluster
at `address` ("auto" or "host:port").
"""

import os

from meta.particles import ParticleRunner


class LocalPool:
    """All members in this process (no Ray): for tests and debugging."""

    def __init__(self, runner_arguments):
        self.runner = ParticleRunner(*runner_arguments)

    def run(self, z, iteration, members):
        return self.runner.run(z, iteration, members), []

    def score(self, z, tasks):
        return self.runner.score(z, tasks)

    def compile_tasks(self, configs):
        return self.runner.compile_tasks(configs)

    def compute_references(self, specs):
        return self.runner.compute_references(specs)

    def set_references(self, records):
        self.runner.set_references(records)

    def get_particles(self):
        return self.runner.get_particles()

    def set_particles(self, particles):
        self.runner.set_particles(particles)

    def close(self):
        pass


class _ParticleActor:
    """A Ray actor around a `ParticleRunner`."""

    def __init__(self, runner_arguments):
        os.environ.setdefault("KERAS_BACKEND", "jax")
        from keras_velo.training.compilation_cache import enable_compilation_cache

        enable_compilation_cache()
        self.runner = ParticleRunner(*runner_arguments)

    def run(self, z, iteration, members):
        return self.runner.run(z, iteration, members)

    def score(self, z, tasks):
        return self.runner.score(z, tasks)

    def compile_tasks(self, configs):
        return self.runner.compile_tasks(configs)

    def compute_references(self, specs):
        return self.runner.compute_references(specs)

    def set_references(self, records):
        self.runner.set_references(records)

    def get_particles(self):
        return self.runner.get_particles()

    def set_particles(self, particles):
        self.runner.set_particles(particles)

    def pid(self):
        return os.getpid()


class RayPool:
    def __init__(self, runner_arguments, workers, address=None):
        import ray

        if not ray.is_initialized():
            from keras_velo.training.compilation_cache import jax_cache_directory

            environment = {"env_vars": {"KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
                                        "JAX_COMPILATION_CACHE_DIR": str(jax_cache_directory())}}
            if address is None:
                ray.init(num_cpus=workers, include_dashboard=False, runtime_env=environment,
                         log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, runtime_env=environment, log_to_driver=False)
        self._ray = ray
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0)(_ParticleActor)
        self._arguments = runner_arguments
        self._references = {}
        self.actors = [self._actor_class.remote(runner_arguments) for _ in range(workers)]

    def _restart(self, index):
        """A fresh actor in place of a dead one, with the references the others hold."""
        self.actors[index] = self._actor_class.remote(self._arguments)
        if self._references:
            self.actors[index].set_references.remote(self._ray.put(self._references))

    def _members_of(self, index, members):
        return [m for m in members if m % len(self.actors) == index]

    def run(self, z, iteration, members):
        ray = self._ray
        z_ref = ray.put(z)
        calls = {}
        for index, actor in enumerate(self.actors):
            own = self._members_of(index, members)
            if own:
                calls[index] = (own, actor.run.remote(z_ref, iteration, own))
        results, failed = [], []
        for index, (own, reference) in calls.items():
            try:
                results.extend(ray.get(reference))
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
                failed.extend(own)
                self._restart(index)
        results.sort(key=lambda result: result["member"])
        return results, sorted(failed)

    def score(self, z, tasks):
        """Task i on actor i % workers; an actor that dies is restarted and its tasks rerun."""
        ray = self._ray
        z_ref = ray.put(z)
        records = [None] * len(tasks)
        for _ in range(3):
            pending = [i for i, r in enumerate(records) if r is None]
            if not pending:
                break
            calls = {}
            for index, actor in enumerate(self.actors):
                own = [i for i in pending if i % len(self.actors) == index]
                if own:
                    calls[index] = (own, actor.score.remote(z_ref, [tasks[i] for i in own]))
            for index, (own, reference) in calls.items():
                try:
                    for i, record in zip(own, ray.get(reference)):
                        records[i] = record
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
                    self._restart(index)
        if any(r is None for r in records):
            raise RuntimeError("meta-validation failed three times on the Ray workers.")
        return records

    def compile_tasks(self, configs):
        """Config i compiled on actor i % workers (they share JAX's persistent cache)."""
        calls = [actor.compile_tasks.remote(configs[index::len(self.actors)])
                 for index, actor in enumerate(self.actors)]
        return sum(self._ray.get(calls))

    def compute_references(self, specs):
        """Spec i on actor i % workers."""
        calls = [actor.compute_references.remote(specs[index::len(self.actors)])
                 for index, actor in enumerate(self.actors)]
        records = {}
        for part in self._ray.get(calls):
            records.update(part)
        return records

    def set_references(self, records):
        """Every actor gets every record (one object-store copy); restarted actors get them again."""
        self._references = {**self._references, **records}
        reference = self._ray.put(self._references)
        self._ray.get([actor.set_references.remote(reference) for actor in self.actors])

    def get_particles(self):
        particles = {}
        for values in self._ray.get([actor.get_particles.remote() for actor in self.actors]):
            particles.update(values)
        return particles

    def set_particles(self, particles):
        calls = []
        for index, actor in enumerate(self.actors):
            own = {m: p for m, p in particles.items() if m % len(self.actors) == index}
            calls.append(actor.set_particles.remote(own))
        self._ray.get(calls)

    def worker_pids(self):
        return self._ray.get([actor.pid.remote() for actor in self.actors])

    def close(self):
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []


def make_pool(runner_arguments, workers, address=None):
    """`LocalPool` for `workers == 0`, else a `RayPool` of `workers` actors."""
    if workers == 0:
        return LocalPool(runner_arguments)
    return RayPool(runner_arguments, workers, address)
