"""Which finished trials' actors Tune keeps (tuner.study.actor_cache): all, while nothing waits."""

from __future__ import annotations

import inspect

from ray.tune.utils.object_cache import _ObjectCache

from tuner.study.actor_cache import KeepWhileIdle, install

ONE_CPU, TWO_CPUS = "1 CPU", "2 CPUs"  # Tune keys its cache by a trial's resources


def cached(cache: _ObjectCache, *actors: str, key: str = ONE_CPU) -> list[bool]:
    return [cache.cache_object(key, actor) for actor in actors]


def test_two_actors_that_end_together_are_both_kept_while_nothing_waits() -> None:
    """The searcher hands out its next two trials a moment later: both find a process."""
    tune_own = _ObjectCache(may_keep_one=True)
    assert cached(tune_own, "a", "b") == [True, False]  # Tune's: the second is killed
    cache = KeepWhileIdle(may_keep_one=True)
    assert cached(cache, "a", "b") == [True, True]
    assert list(cache.flush_cached_objects()) == [] and cache.num_cached_objects == 2
    for _ in range(2):  # the two new trials
        cache.increase_max(ONE_CPU)
        assert cache.pop_cached_object(ONE_CPU) in ("a", "b")
    assert cache.num_cached_objects == 0


def test_a_trial_of_other_resources_waiting_frees_them() -> None:
    """Kept actors hold resources: a trial that needs others gets them (Tune's rule)."""
    cache = KeepWhileIdle(may_keep_one=True)
    cached(cache, "a", "b")
    cache.increase_max(TWO_CPUS)
    assert sorted(cache.flush_cached_objects()) == ["a", "b"]
    assert cached(cache, "c") == [False]  # and the next to end is not kept either


def test_a_waiting_trial_of_the_same_resources_keeps_what_it_can_use() -> None:
    cache = KeepWhileIdle(may_keep_one=True)
    cached(cache, "a", "b")
    cache.increase_max(ONE_CPU)
    assert list(cache.flush_cached_objects()) == ["a"]  # FIFO, as Tune's: "b" is for it
    assert cache.pop_cached_object(ONE_CPU) == "b"


def test_the_end_of_the_experiment_frees_them_all() -> None:
    cache = KeepWhileIdle(may_keep_one=True)
    cached(cache, "a", "b")
    assert sorted(cache.flush_cached_objects(force_all=True)) == ["a", "b"]


def test_the_private_names_it_relies_on_are_in_this_ray() -> None:
    """A Ray upgrade that moves them fails here, not silently (actors killed and restarted)."""
    from ray.tune.execution import tune_controller

    controller = inspect.getsource(tune_controller.TuneController)
    assert "self._actor_cache = _ObjectCache(may_keep_one=True)" in controller
    assert "self._actor_cache.cache_object(" in controller
    assert "self._actor_cache.flush_cached_objects(" in controller
    source = inspect.getsource(_ObjectCache)
    for name in ("self._max_num_objects", "self._cached_objects", "self._num_cached_objects"):
        assert name in source
    install()
    install()  # idempotent
    assert tune_controller._ObjectCache is KeepWhileIdle
