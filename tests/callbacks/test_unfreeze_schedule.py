"""UnfreezeSchedule: the stages of progressive unfreezing resolved without a Trainer or a model,
against schedules worked out by hand."""

from __future__ import annotations

import dataclasses

import pytest

from cxr_lightning.callbacks.unfreeze_schedule import UnfreezeSchedule

RESNET = ["layer4.2", "layer4.1", "layer4.0", "layer3.35", "layer3.34", "layer3.33", "stem"]


@pytest.mark.parametrize(("schedule", "stages"), [
    # the study: one block every 10 epochs down to layer4.0
    (UnfreezeSchedule(interval=10, until="layer4.0"), [(0, 0), (10, 1), (20, 2), (30, 3)]),
    # Table 1: explicit steps, names and a count
    (UnfreezeSchedule(interval=None, steps=((35, ["layer4.2"]), (50, ["layer4.0", "layer4.1"]),
                                            (70, 3))), [(0, 0), (35, 1), (50, 3), (70, 6)]),
    (UnfreezeSchedule(interval=5, blocks_per_step=3), [(0, 0), (5, 3), (10, 6), (15, 7)]),
    (UnfreezeSchedule(interval=5, max_blocks=2), [(0, 0), (5, 1), (10, 2)]),
    (UnfreezeSchedule(max_blocks=0), [(0, 0)]),
    (UnfreezeSchedule(interval=None), [(0, 0)]),
    (UnfreezeSchedule(steps=((0, "all"),)), [(0, 0), (0, 7)]),
    # a step beyond the cap is dropped
    (UnfreezeSchedule(steps=((3, 1), (6, 2)), until="layer4.1"), [(0, 0), (3, 1), (6, 2)]),
    (UnfreezeSchedule(steps=((3, 2), (6, 2)), max_blocks=2), [(0, 0), (3, 2)]),
])
def test_resolve(schedule: UnfreezeSchedule, stages: list[tuple[int, int]]) -> None:
    assert schedule.resolve(RESNET) == stages


def test_longest_is_the_last_start_plus_its_length() -> None:
    schedule = UnfreezeSchedule(interval=10, until="layer4.0", last_stage_epochs=10)
    assert schedule.longest(schedule.resolve(RESNET)) == 40
    assert UnfreezeSchedule(interval=10).longest([(0, 0), (10, 1)]) == 11


def test_it_is_a_value_the_yaml_lists_normalise_into() -> None:
    from_yaml = UnfreezeSchedule(steps=[[35, ["layer4.2"]], [50, 2]])
    assert from_yaml == UnfreezeSchedule(steps=((35, ("layer4.2",)), (50, 2)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_yaml.interval = 3  # type: ignore[misc]


@pytest.mark.parametrize(("schedule", "match"), [
    (UnfreezeSchedule(until="layer5.0"), "until='layer5.0' is not a block"),
    (UnfreezeSchedule(steps=((3, ["layer4.0"]),)), r"names \['layer4.0'\]; the next blocks"),
    (UnfreezeSchedule(steps=((3, 8),)), "unfreezes 8 blocks, only 7 remain"),
])
def test_what_needs_the_model_is_checked_when_resolving(schedule, match) -> None:
    with pytest.raises(ValueError, match=match):
        schedule.resolve(RESNET)


@pytest.mark.parametrize("kwargs", [{"interval": 0}, {"max_blocks": -1}, {"blocks_per_step": 0},
                                    {"last_stage_epochs": 0}, {"steps": ((5, 1), (5, 1))},
                                    {"steps": ((1, []),)}, {"steps": ((1, "some"),)}])
def test_what_needs_no_model_is_checked_at_once(kwargs) -> None:
    with pytest.raises(ValueError):
        UnfreezeSchedule(**kwargs)
