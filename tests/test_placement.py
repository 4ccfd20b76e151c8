"""Where trials run (tuner.cluster.placement): the accelerator type and the placement strategy
decided from the cluster's nodes, and the report's line of where they ran. No Ray."""

from __future__ import annotations

import pandas as pd
import pytest

from tuner.cluster.placement import (
    PACK,
    STRICT_PACK,
    plan_placement,
    where_text,
    where_trials_ran,
)
from tuner.errors import InputError

G5 = {"CPU": 48.0, "GPU": 4.0, "accelerator_type:A10G": 1.0}  # the shipped cluster.yaml's
P4D = {"CPU": 96.0, "GPU": 8.0, "accelerator_type:A100": 1.0}


def test_a_trial_one_node_holds_is_strictly_packed():
    nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    assert plan_placement(nodes, 2, 1.0, 0.0) == (plan := plan_placement(nodes, 2, 1.0, 0.0))
    assert (plan.strategy, plan.accelerator_type, plan.notes) == (STRICT_PACK, "", ())
    assert plan_placement(nodes, 1, 1.0, 0.0).strategy == STRICT_PACK


def test_a_trial_no_node_holds_is_packed_and_said_to_span_nodes():
    plan = plan_placement([{"CPU": 2.0}, {"CPU": 2.0}], 3, 1.0, 0.0)
    assert plan.strategy == PACK
    assert plan.notes == (
        "no node holds all 3 workers of a trial: trials span nodes (their step times include "
        "the network between them)",
    )


def test_a_gpu_study_on_mixed_types_takes_the_type_a_node_of_which_holds_a_trial():
    """8 workers of one GPU: four g5 nodes hold 16 at once, one p4d 8, but only a p4d holds a
    whole trial: the study runs on A100, strictly packed; 4 workers fit either, and the type
    with the most room wins."""
    nodes = [G5] * 4 + [P4D]
    plan = plan_placement(nodes, 8, 4.0, 1.0)
    assert (plan.strategy, plan.accelerator_type) == (STRICT_PACK, "A100")
    assert "2 accelerator types (A100, A10G)" in plan.notes[0]
    plan = plan_placement(nodes, 4, 4.0, 1.0)
    assert (plan.strategy, plan.accelerator_type) == (STRICT_PACK, "A10G")
    # the type asked for is kept, even where the nodes of it cannot hold a trial whole
    plan = plan_placement(nodes, 8, 4.0, 1.0, "A10G")
    assert (plan.strategy, plan.accelerator_type) == (PACK, "A10G")
    # a CPU study is not pinned to a GPU type
    assert plan_placement(nodes, 2, 1.0, 0.0).accelerator_type == ""


def test_a_type_no_node_has_is_refused_unless_no_node_says_its_type():
    with pytest.raises(InputError, match=r"--accelerator-type H100: no node .* A100, A10G"):
        plan_placement([G5, P4D], 1, 1.0, 1.0, "H100")
    # a machine whose nodes declare no type at all: every trial would wait forever
    with pytest.raises(InputError, match=r"--accelerator-type H100: .* \(its types: none"):
        plan_placement([{"CPU": 8.0, "GPU": 1.0}], 1, 1.0, 1.0, "H100")
    # an autoscaler's node type whose resources are not filled in yet: the user is trusted
    plan = plan_placement([{"CPU": 8.0}, {}], 1, 1.0, 1.0, "H100")
    assert plan.accelerator_type == "H100"


def test_where_trials_ran_counts_nodes_trials_that_spanned_and_devices():
    table = pd.DataFrame(
        {
            "trial_id": ["a", "a", "b", "c"],
            "node_id": ["n1", "n1", "n2", "n1"],
            "nodes": [1, 1, 2, 1],
            "device_name": ["NVIDIA A100", "NVIDIA A100", "NVIDIA A100", "NVIDIA A100"],
        }
    )
    ran = where_trials_ran(table)
    assert ran == {
        "nodes_used": 2,
        "trials": 3,
        "trials_spanning_nodes": 1,
        "devices": ["NVIDIA A100"],
    }
    assert where_text(PACK, "A100", 8, ran) == (
        "8 workers per trial, trials may span nodes (PACK: no node holds a whole trial) on A100 "
        "only; 3 trials ran on 2 node(s) (NVIDIA A100), 1 of them on more than one node"
    )
    # a study from before trials reported their nodes: the rule only, or what is known
    assert where_text(STRICT_PACK, "", 1, {}) == "one worker per trial"
    old = where_trials_ran(table.drop(columns=["nodes", "device_name"]))
    assert old["trials_spanning_nodes"] is None
    assert where_text(STRICT_PACK, "", 2, old).endswith("3 trials ran on 2 node(s)")


def test_a_local_rays_dashboard_never_takes_a_port_ray_keeps_for_another_component(monkeypatch):
    """The OS may hand out 52365 (Ray's dashboard agent's default, in Linux's ephemeral range):
    the dashboard then takes the next free port (seen once: Ray refused to start)."""
    from tuner.cluster import connect

    handed = iter([52365, 8265, 41234])
    monkeypatch.setattr(connect, "free_port", lambda: next(handed))
    kwargs = connect.local_ray_kwargs()
    assert kwargs["dashboard_port"] == 41234
    assert kwargs["runtime_env"]["env_vars"]["RAY_API_SERVER_ADDRESS"].endswith(":41234")
