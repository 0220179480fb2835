"""The arms of the experiment. Every arm of a seed builds its model right after
torch.manual_seed(seed) and trains with the same loop, batch order and validation passes;
the arms that depend on Esper's run (its growth count, final size, architecture and FLOPs)
run after it, within the same seed."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import random
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import esper.tolaria
from esper.blueprints.builder import build_seed
from esper.blueprints.catalog import builtin_blueprints
from esper.kasmina import KasminaConfig, wrap
from esper.kasmina.merge import residual_module
from esper.kasmina.widen import WidenSeed, widened_copy
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.tolaria import LOCAL_HEURISTIC, LocalPolicy, ResourceBudget, TolariaConfig
from esper.tolaria.kernels import LOCAL_KERNEL_SEED

from . import hosts
from .data import Splits
from .flops import FlopMeter
from .growth import Planned, ScheduledGrowth
from .loop import LEARNING_RATE, train

# Arms in the order they run within a seed (dependents after "esper").
ARMS = ("static-small", "esper", "esper-width", "esper-stack", "esper-late-slowdown",
        "esper-plateau-only", "random",
        "schedule", "static-final-size", "esper-arch-static", "esper-arch-restarts", "gromo",
        "static-large", "learned")
# Rows derived from another arm: its test accuracy at Esper's total FLOPs for the seed. At a
# constant learning rate, where its run crossed that budget; under a decaying schedule (where
# a run cut short has not annealed), a second run of the same model and initialisation whose
# schedule ends at that budget: shorter than its full run where that spent more than Esper,
# longer where it spent less (GroMo's: see LONGER).
MATCHED = {"static-final-size@esper-flops": "static-final-size",
           "esper-arch-static@esper-flops": "esper-arch-static",
           "esper-arch-restarts@esper-flops": "esper-arch-restarts",
           "gromo@esper-flops": "gromo"}
# The FLOP-matched rows whose second run spends at least Esper's FLOPs, not at most: GroMo's
# procedure grows at whole epochs, so it runs again for as many epochs as reach them.
LONGER = {"gromo@esper-flops"}
LABELS = {
    "static-small": "static small host",
    "esper": "Esper, heuristic at defaults",
    "esper-width": "Esper, heuristic, width growth opted in (BP-WIDEN-HALF)",
    "esper-stack": "Esper, heuristic, seeds that stack (slot_depth 3)",
    "esper-late-slowdown": "Esper, the previous default (slowdown over 2-epoch windows, ratio 0.25)",
    "esper-plateau-only": "Esper, heuristic growing on plateaus only (slowdown_ratio 0)",
    "random": "random growth (same seed count, random slots/blueprints/times)",
    "schedule": "fixed schedule (Esper's widenings, blueprints and slots, every E/10 epochs)",
    "static-final-size": "static, Esper's final parameter count, same epochs",
    "static-final-size@esper-flops": "  the same, stopped at Esper's FLOPs",
    "esper-arch-static": "Esper's final architecture, trained static from the start",
    "esper-arch-static@esper-flops": "  the same, stopped at Esper's FLOPs",
    "esper-arch-restarts": "Esper's final architecture trained static, Adam's moments restarted where Esper widened its stream",
    "esper-arch-restarts@esper-flops": "  the same, stopped at Esper's FLOPs",
    "gromo": "GroMo 0.1.0 (tutorial procedure), grown to about Esper's size",
    "gromo@esper-flops": "  the same procedure run for more epochs, to at least Esper's FLOPs",
    "static-large": "static large reference",
    "learned": "Esper, learned policy (Simic GNN trained on digits episodes of a heuristic growing by the local rules, some of long epochs, under the same schedule)",
}
# The fixed schedule's spacings (epochs between its growth events) the "schedule" arm runs.
# The one with the best mean validation accuracy over the seeds is the best fixed schedule
# Esper is compared with, chosen on the data every decision may look at, as a user tuning
# a schedule would (report.best_schedule). On the char host the spacing moved the test
# accuracy by up to 1 pp in both directions, on the MLP by 0.2 pp.
SCHEDULE_SPACINGS = (1, 2, 3)
SCHEDULE_PREFIX = "schedule-every-"
# The FLOP-matched rows under a decaying learning rate: second runs, not cuts.
FITTED_LABEL = "  the same, a second run whose schedule ends at Esper's FLOPs"
# Random growth draws its germination times from this leading fraction of the run, so a
# seed has time to go through its lifecycle.
RANDOM_TIME_FRACTION = 0.7
# Slots per layer of the esper-stack arm: deeper than the parameter budget can fill, so the
# budget and the policy end growth.
STACK_DEPTH = 3
# Kasmina's default room for growth: seed parameters up to the host's own count.
SEED_PARAM_FRACTION = KasminaConfig().max_seed_param_fraction


class NotAvailable(Exception):
    """This arm cannot run here; the message says why (recorded, not fatal)."""


@dataclass
class Context:
    host: str
    seed: int
    epochs: int
    data: Splits
    # --quick: the controls grow even when Esper's short run does not, so the harness's
    # growth paths run (random growth plans at least one germination, GroMo grows ~10%).
    quick: bool = False
    work_dir: Path = Path(tempfile.gettempdir())  # where the learned policy is cached
    lr_schedule: str = "constant"  # loop.LR_SCHEDULES
    learning_rate: float = LEARNING_RATE  # Adam's peak rate in every arm
    flops_weight: float | None = None  # the esper arm's HeuristicConfig.flops_weight (None: default)
    # KasminaConfig.slot_depth of every grown arm (Esper and the random and scheduled
    # growth that replay its seed count or seeds, whose slots must exist in their runs too).
    slot_depth: int = 1
    # KasminaConfig.seed_init of every grown arm (how a new seed's entry layer starts).
    seed_init: str = "default"
    # KasminaConfig.max_seed_param_fraction of every grown arm: how much growth may add,
    # as a share of the host's parameters (the replays of Esper's growth need its room).
    seed_param_fraction: float = SEED_PARAM_FRACTION
    # TolariaConfig.seed_lr of every grown arm (the rate a new seed's group starts at).
    seed_lr: str = "follow"
    # Every grown arm may also draw the opt-in width blueprint (Esper and the random growth
    # that must draw from the same catalogue; the schedule replays what Esper grew).
    width_growth: bool = False
    # The esper arms' HeuristicConfig fields changed from the local heuristic's (--heuristic).
    heuristic: dict = field(default_factory=dict)
    # The esper arms' ResourceBudget.max_training_flops in GFLOPs (None: no budget).
    training_flops_budget: float | None = None
    # The esper arms' HeuristicConfig.budget_flops_weight (None: the default).
    budget_flops_weight: float | None = None
    # The fixed schedule's spacings, each run as its own arm (schedule_arm).
    schedule_every: tuple[int, ...] = SCHEDULE_SPACINGS
    done: dict[str, dict] = field(default_factory=dict)  # arm -> record, this seed

    @property
    def example(self) -> torch.Tensor:
        return self.data.x_train[:2]

    def esper(self) -> dict:
        if "esper" not in self.done:
            raise NotAvailable("needs the esper arm in the same run")
        return self.done["esper"]


def _adam(model: torch.nn.Module, lr: float = LEARNING_RATE) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr)


def _static(ctx: Context, model: torch.nn.Module, milestones: dict | None = None,
            max_steps: int | None = None, restarts: tuple[int, ...] = (),
            epochs: int | None = None) -> dict:
    return train(model, _adam(model, ctx.learning_rate), ctx.data, seed=ctx.seed, epochs=epochs or ctx.epochs,
                 meter=FlopMeter(), milestones=milestones, lr_schedule=ctx.lr_schedule,
                 max_steps=max_steps, restarts=restarts)


def _matched(ctx: Context) -> dict:
    return {"esper-flops": ctx.esper()["flops"]["total"]}


def _static_with_matched(ctx: Context, build: Callable[[], torch.nn.Module],
                         restarts: tuple[int, ...] = ()) -> dict:
    """A static control's full run, with its test accuracy at Esper's FLOPs in
    record["milestones"]["esper-flops"] (see MATCHED). `build` makes the model right after
    torch.manual_seed(ctx.seed), so both runs start from the same weights."""
    torch.manual_seed(ctx.seed)
    if ctx.lr_schedule == "constant":
        return _static(ctx, build(), _matched(ctx), restarts=restarts)
    record = _static(ctx, build(), restarts=restarts)
    budget, per_epoch = ctx.esper()["flops"]["total"], ctx.data.steps_per_epoch
    steps = fitted_steps(record, budget, per_epoch, ctx.epochs)
    if steps is None:  # a cheaper model than Esper's: given Esper's compute, it trains longer
        steps = longer_steps(record, budget, per_epoch, ctx.epochs)

    def rerun(max_steps: int) -> dict:
        torch.manual_seed(ctx.seed)
        return _static(ctx, build(), max_steps=max_steps, restarts=restarts,
                       epochs=max(ctx.epochs, math.ceil(max_steps / per_epoch)))
    return _with_fitted_run(ctx, record, steps, rerun)


def _with_fitted_run(ctx: Context, record: dict, steps: int | None,
                     rerun: Callable[[int], dict]) -> dict:
    """`record` with its point at Esper's FLOPs in record["milestones"]["esper-flops"]: a
    second run of `steps` steps (`rerun`: fewer steps than the full run's where it spent
    more than Esper, more where it spent less), whose learning rate anneals within them;
    or the full run itself (`steps` None: a schedule's run that spent no more than Esper,
    or a static run within a step of Esper's FLOPs)."""
    if steps is None:  # this run spent Esper's FLOPs to within a step: its end is the matched point
        record["milestones"] = {"esper-flops": {
            "test_accuracy": record["test_accuracy"], "flops": record["flops"]["total"],
            "epoch": float(ctx.epochs), "reached": False}}
        return record
    fitted = rerun(steps)
    record["milestones"] = {"esper-flops": {
        "test_accuracy": fitted["test_accuracy"], "flops": fitted["flops"]["total"],
        "epoch": steps / ctx.data.steps_per_epoch, "reached": True, "fitted_run": True,
        "wall_s": fitted["wall_s"], "curve": fitted["curve"]}}
    return record


def fitted_steps(record: dict, budget: float, steps_per_epoch: int, epochs: int) -> int | None:
    """Training steps of a run whose FLOPs (training steps plus a validation pass per
    epoch begun), at the full run's costs, come closest to `budget` without exceeding it;
    None when the full run fits within it."""
    if record["flops"]["total"] <= budget:
        return None
    per_step = record["flops"]["train"] / (epochs * steps_per_epoch)
    per_validation = record["flops"]["validation"] / epochs
    steps = epochs * steps_per_epoch
    while steps > 1 and steps * per_step + math.ceil(steps / steps_per_epoch) * per_validation > budget:
        steps -= 1
    return steps


def longer_steps(record: dict, budget: float, steps_per_epoch: int, epochs: int) -> int | None:
    """Training steps of a longer run (more epochs, the same costs per step and per
    validation pass as the full run's) whose FLOPs come closest to `budget` without
    exceeding it: a static control that spends less than Esper is given Esper's compute,
    not compared at its own. None when no step more fits."""
    per_step = record["flops"]["train"] / (epochs * steps_per_epoch)
    per_validation = record["flops"]["validation"] / epochs
    steps = math.floor(budget / per_step)
    while steps > epochs * steps_per_epoch and \
            steps * per_step + math.ceil(steps / steps_per_epoch) * per_validation > budget:
        steps -= 1
    return steps if steps > epochs * steps_per_epoch else None


def fitted_steps_grown(record: dict, budget: float, steps_per_epoch: int) -> int | None:
    """Training steps of a second run of a scheduled growth whose FLOPs come closest to
    `budget` without exceeding it, read off the full run's cumulative FLOPs per epoch: up to
    its cut the second run is the same run (the same growth at the same steps). Within the
    epoch where the budget falls, a step costs what that epoch's steps did, the epoch's
    validation pass taken at the run's share of validation. None when the full run fits."""
    if record["flops"]["total"] <= budget:
        return None
    share = record["flops"]["validation"] / record["flops"]["total"]
    before = 0.0
    for k, point in enumerate(record["curve"]):
        cost = point["flops"] - before
        if point["flops"] > budget:
            per_step = cost * (1 - share) / steps_per_epoch
            more = int((budget - before - cost * share) // per_step)
            # (no step of this epoch fits with its validation pass: end at the epoch before)
            return k * steps_per_epoch + more if more >= 1 else max(1, k * steps_per_epoch)
        before = point["flops"]
    return len(record["curve"]) * steps_per_epoch  # only the closing pass went over


def static_small(ctx: Context) -> dict:
    torch.manual_seed(ctx.seed)
    return _static(ctx, hosts.small(ctx.host, ctx.data.vocab_size))


def static_large(ctx: Context) -> dict:
    torch.manual_seed(ctx.seed)
    # (a reference, not a target: its point at Esper's FLOPs only where a cut is meaningful)
    matched = "esper" in ctx.done and ctx.lr_schedule == "constant"
    return _static(ctx, hosts.large(ctx.host, ctx.data.vocab_size), _matched(ctx) if matched else None)


def static_final_size(ctx: Context) -> dict:
    target = ctx.esper()["params"]
    record = _static_with_matched(ctx, lambda: hosts.sized(ctx.host, target, ctx.data.vocab_size))
    record["widths"] = hosts.sized_widths(ctx.host, target, ctx.data.vocab_size)
    return record


def _grown(ctx: Context, policy, blueprints: list[str] | None = None,
           kasmina: KasminaConfig | None = None,
           budget: ResourceBudget | None = None, max_steps: int | None = None) -> tuple[dict, object]:
    """The small host under an Esper session with `policy` (and `budget`), through the
    user-facing API."""
    torch.manual_seed(ctx.seed)
    model = hosts.small(ctx.host, ctx.data.vocab_size)
    optimizer = _adam(model, ctx.learning_rate)
    if blueprints is None and ctx.width_growth:
        blueprints = growth_blueprints()
    # The run's Kasmina settings (at their defaults, Kasmina's own: wrap's KasminaConfig()).
    kasmina = kasmina or KasminaConfig(slot_depth=ctx.slot_depth, seed_init=ctx.seed_init,
                                       max_seed_param_fraction=ctx.seed_param_fraction)
    config = TolariaConfig(run_id=f"morpho-{ctx.host}-{ctx.seed}", progress=False, seed_lr=ctx.seed_lr)
    session = esper.tolaria.attach(model, optimizer, policy=policy, example_input=ctx.example,
                                   config=config, blueprints=blueprints, kasmina=kasmina,
                                   budget=budget)
    morph = session.model
    every = config.snapshot_every  # the local policies ask for no other interval

    def state_key():
        return hosts.params(morph), tuple(s.stage for s in morph.slots.values())

    meter = FlopMeter()
    record = train(morph, optimizer, ctx.data, seed=ctx.seed, epochs=ctx.epochs, meter=meter,
                   session=session, state_key=state_key, lr_schedule=ctx.lr_schedule,
                   safe_point=lambda: (morph.global_step + 1) % every == 0,
                   finish=session.close, max_steps=max_steps)
    with warnings.catch_warnings():  # live seeds are left out, as intended
        warnings.simplefilter("ignore")
        function_params = hosts.params(morph.unwrap())
    germinated = [{"step": t.step, "epoch": t.epoch, "slot": t.slot_id, "blueprint": t.blueprint_ref}
                  for t in morph.transitions if t.to_stage == SeedStage.SEED_STAGE_GERMINATED]
    states = morph.seed_states()
    record.update({
        "params_with_live_seeds": record["params"],
        "params": function_params,  # what the final model computes with (fossils merged)
        "germinations": germinated,
        # merged: an affine seed folded into its host layer's weights (no module left)
        "fossilized": [_fossil(morph, s) for s in states
                       if s.stage == SeedStage.SEED_STAGE_FOSSILIZED],
        "culled": sum(t.to_stage == SeedStage.SEED_STAGE_CULLED for t in morph.transitions),
        # the residual stream's widenings (WidenStreamAction), where the host declares one
        "stream": _stream(morph),
        "live_at_end": sum(1 for s in states if s.stage not in (
            SeedStage.SEED_STAGE_DORMANT, SeedStage.SEED_STAGE_FOSSILIZED,
            SeedStage.SEED_STAGE_EMBARGOED, SeedStage.SEED_STAGE_RESETTING)),
    })
    return record, morph


def _stream(morph) -> dict | None:
    site = morph.stream
    if site is None:
        return None
    return {"declared": site.declared_width, "width": site.width,
            "widenings": [dict(h) for h in site.history]}


def _fossil(morph, state) -> dict:
    """A fossil as the final-architecture control needs it. merged: an affine seed folded
    into its host layer's weights (no module left); widen: a width seed (which layers it
    widens and by how much)."""
    slot = morph.slot(state.slot_id)
    seed = slot.seed
    record = {"slot": state.slot_id, "node": slot.node_id, "blueprint": state.blueprint_ref,
              "merged": seed is None}
    if isinstance(seed, WidenSeed):
        record["widen"] = {"producer": seed.producer_name, "consumer": seed.consumer_name,
                           "units": seed.units}
    return record


# The esper arms' HeuristicConfig fields that have options of their own (--flops-weight,
# --budget-flops-weight), each a Context field of the same name (None: the default).
HEURISTIC_OPTIONS = ("flops_weight", "budget_flops_weight")


def _esper_policy(ctx: Context) -> str | LocalPolicy:
    """The esper arms' policy: the local heuristic at its defaults, or with compute priced
    at --flops-weight (or under a budget at --budget-flops-weight), or other fields
    changed by --heuristic."""
    changes = {name: getattr(ctx, name) for name in HEURISTIC_OPTIONS if getattr(ctx, name) is not None}
    changes.update(ctx.heuristic)
    if not changes:
        return "local"
    return LocalPolicy(config=dataclasses.replace(LOCAL_HEURISTIC, **changes))


def _esper_budget(ctx: Context) -> ResourceBudget | None:
    """The esper arms' budget: --training-flops-budget over the run's planned steps."""
    if ctx.training_flops_budget is None:
        return None
    return ResourceBudget(max_training_flops=ctx.training_flops_budget * 1e9,
                          planned_steps=ctx.epochs * ctx.data.steps_per_epoch)


def run_esper(ctx: Context) -> dict:
    record, _ = _grown(ctx, _esper_policy(ctx), budget=_esper_budget(ctx))
    return record


def growth_blueprints() -> list[str]:
    """Every growth blueprint of the catalogue, the opt-in width blueprint included (all
    but the diagnostic family)."""
    return [f"{s.name}@{s.version}" for s in builtin_blueprints()
            if s.family != bp.BLUEPRINT_FAMILY_DIAGNOSTIC]


def run_esper_width(ctx: Context) -> dict:
    """Esper at its defaults plus the opt-in width blueprint (every growth family)."""
    record, _ = _grown(ctx, "local", blueprints=growth_blueprints())
    return record


def run_esper_stack(ctx: Context) -> dict:
    """Esper (at its defaults, or priced at --flops-weight) with seeds that stack
    (KasminaConfig.slot_depth=STACK_DEPTH): the policy and the parameter budget, not one
    slot per layer, end growth."""
    record, _ = _grown(ctx, _esper_policy(ctx), kasmina=KasminaConfig(
        slot_depth=STACK_DEPTH, seed_init=ctx.seed_init, max_seed_param_fraction=ctx.seed_param_fraction),
                       budget=_esper_budget(ctx))
    return record


def run_esper_plateau_only(ctx: Context) -> dict:
    """Esper whose heuristic grows on validation plateaus only (the default until the
    slowdown rule was measured): what growing on diminishing returns adds."""
    config = dataclasses.replace(LOCAL_HEURISTIC, slowdown_ratio=0.0)
    record, _ = _grown(ctx, LocalPolicy(config=config))
    return record


def run_esper_late_slowdown(ctx: Context) -> dict:
    """Esper whose heuristic grows on diminishing returns judged over two-epoch windows at a
    quarter of the pace (the previous default's windows and ratio, before slowdown_window=1
    and ratio 0.5, and before the seeds' first-epoch signal): it grows at epochs 5-9
    instead of 2-4."""
    config = dataclasses.replace(LOCAL_HEURISTIC, slowdown_ratio=0.25, slowdown_window=2,
                                 seed_first_epoch_pace=False)
    record, _ = _grown(ctx, LocalPolicy(config=config))
    return record


def _widenings(record: dict) -> list[dict]:
    """A grown run's widenings of its residual stream (none where the host declares none)."""
    return (record.get("stream") or {}).get("widenings", [])


def _growth_count(record: dict) -> int:
    """Growth events of a grown run: its germinations and its stream's widenings."""
    return len(record["germinations"]) + len(_widenings(record))


def run_random(ctx: Context) -> dict:
    count = _growth_count(ctx.esper())
    if ctx.quick:
        count = max(count, 1)
    rng = random.Random(ctx.seed)
    last = max(1, int(RANDOM_TIME_FRACTION * ctx.epochs * ctx.data.steps_per_epoch))
    plan = [Planned(step=rng.randint(1, last)) for _ in range(count)]
    source = ScheduledGrowth(plan, rng=rng)
    record, _ = _grown(ctx, source)
    record.update({"planned": count, "applied": source.applied, "dropped": source.dropped})
    return record


def schedule_epochs(epochs: int, count: int, every: int | None = None) -> list[int]:
    """The fixed schedule's epochs: one growth event every `every` epochs (default E/10)."""
    every = every or max(1, epochs // 10)
    return [every * (i + 1) for i in range(count)]


def schedule_arm(every: int) -> str:
    """The arm of the fixed schedule with one growth event every `every` epochs."""
    return f"{SCHEDULE_PREFIX}{every}"


def spacing_of(arm: str) -> int | None:
    """The spacing of a schedule_arm, or None for any other arm."""
    tail = arm.removeprefix(SCHEDULE_PREFIX)
    return int(tail) if tail != arm and tail.isdigit() else None


# Arms whose policy is the local heuristic at its defaults, or made from them (the random
# and fixed schedules' lifecycle, the learned policy's fallback), whatever the esper arm's
# settings: a change of the defaults changes them, --heuristic does not.
DEFAULT_POLICY_ARMS = frozenset({"esper-width", "esper-late-slowdown", "esper-plateau-only",
                                 "random", "learned"})


def follows_defaults(arm: str) -> bool:
    """Whether an arm's runs follow the local heuristic's defaults (DEFAULT_POLICY_ARMS, the
    fixed schedules)."""
    return arm in DEFAULT_POLICY_ARMS or arm == "schedule" or spacing_of(arm) is not None


def runs_for(arm: str, ctx: Context) -> list[tuple[str, Callable[[Context], dict]]]:
    """The (arm, runner) pairs that `--arms ARM` runs: one per spacing for the schedule."""
    if arm == "schedule":
        return [(schedule_arm(k), functools.partial(run_schedule, every=k)) for k in ctx.schedule_every]
    return [(arm, RUNNERS[arm])]


def run_schedule(ctx: Context, every: int | None = None) -> dict:
    """Esper's growth replayed at fixed times: its stream's widenings first (as it widens
    before growing seeds), then its fossils in the order they germinated, one every `every`
    epochs (default E/10)."""
    fossils = ctx.esper()["fossilized"]
    order = {g["slot"]: g["step"] for g in ctx.esper()["germinations"]}
    fossils = sorted(fossils, key=lambda f: order.get(f["slot"], 0))
    widenings = _widenings(ctx.esper())
    epochs = schedule_epochs(ctx.epochs, len(widenings) + len(fossils), every)
    steps = [e * ctx.data.steps_per_epoch for e in epochs]

    def plan() -> list[Planned]:  # afresh for each run (a run marks its items)
        return [Planned(step=step, features=w["to"] - w["from"])
                for step, w in zip(steps, widenings, strict=False)] + \
            [Planned(step=step, slot_id=f["slot"], blueprint_ref=f["blueprint"])
             for step, f in zip(steps[len(widenings):], fossils, strict=True)]
    source = ScheduledGrowth(plan())
    record, _ = _grown(ctx, source)
    record.update({"schedule_epochs": epochs, "applied": source.applied, "dropped": source.dropped})
    if ctx.lr_schedule == "constant":  # no second run: the matched point would be a cut
        return record
    # Growing earlier costs more: at Esper's FLOPs, a second run annealed within them.
    fitted = fitted_steps_grown(record, ctx.esper()["flops"]["total"], ctx.data.steps_per_epoch)
    return _with_fitted_run(ctx, record, fitted,
                            lambda max_steps: _grown(ctx, ScheduledGrowth(plan()), max_steps=max_steps)[0])


def esper_architecture(ctx: Context) -> torch.nn.Module:
    """Esper's final architecture for this seed, freshly initialised (its seeds built after
    torch.manual_seed(ctx.seed), which this function calls): the small host (same
    seed) with each width fossil's layers widened, each unmerged fossil's blueprint built in its slot (with the local kernels'
    initialisation, as Esper germinated it) as the residual module `unwrap()` makes of a
    fossil. Merged fossils (affine seeds folded into the host weights) add no module.

    (Fossilizing freshly built seeds with esper.kasmina.testing.force_fossilize would not
    do: a function-preserving seed is exactly zero at initialisation, so Kasmina's merge
    finds it affine and folds it away.)"""
    catalog = {f"{s.name}@{s.version}": s for s in builtin_blueprints()}
    torch.manual_seed(ctx.seed)
    host = hosts.small(ctx.host, ctx.data.vocab_size, width=_final_stream_width(ctx))
    shapes = {slot.node_id: slot.shape
              for slot in wrap(copy.deepcopy(host), example_input=ctx.example).slots.values()}
    for fossil in ctx.esper()["fossilized"]:
        if fossil.get("widen"):  # a wider layer pair, freshly initialised
            w = fossil["widen"]
            host = widened_copy(host, w["producer"], w["consumer"], w["units"])
    for fossil in ctx.esper()["fossilized"]:
        if fossil["merged"] or fossil.get("widen"):
            continue
        name = fossil.get("node", fossil["slot"])  # stacked fossils wrap the one below
        seed = build_seed(catalog[fossil["blueprint"]], shapes[name], seed=LOCAL_KERNEL_SEED)
        parent_name, _, child = name.rpartition(".")
        parent = host.get_submodule(parent_name) if parent_name else host
        setattr(parent, child, residual_module(host.get_submodule(name), seed))
    return host


def _final_stream_width(ctx: Context) -> int | None:
    """The residual stream's width at the end of Esper's run (None: it never widened)."""
    return ctx.esper()["stream"]["width"] if _widenings(ctx.esper()) else None


def run_esper_arch(ctx: Context) -> dict:
    record = _static_with_matched(ctx, lambda: esper_architecture(ctx))
    record["fossils"] = ctx.esper()["fossilized"]
    return record


def run_esper_arch_restarts(ctx: Context) -> dict:
    """Esper's final architecture trained static from the start, with Adam's moments
    restarted at the steps where Esper widened its residual stream (a widening restarts
    them: esper.tolaria.optim.swap_parameters). The restart alone lifted the char host's
    wide model by 1.5-1.7 pp in the d_model probe, so this is the control that separates
    what growing the stream adds from what restarting Adam does."""
    steps = tuple(w["step"] for w in _widenings(ctx.esper()))
    if not steps:
        raise NotAvailable("Esper's run did not widen a residual stream")
    record = _static_with_matched(ctx, lambda: esper_architecture(ctx), restarts=steps)
    record.update({"fossils": ctx.esper()["fossilized"], "restarts": list(steps)})
    return record


def run_gromo(ctx: Context) -> dict:
    from .gromo_arm import run  # imports gromo (optional)

    return run(ctx)


def run_learned(ctx: Context) -> dict:
    from .learned import local_policy

    policy, counting, path = local_policy(ctx.work_dir, ctx.quick, ctx.lr_schedule)
    record, _ = _grown(ctx, policy)
    record.update({"policy": path.name, "policy_version": counting.version,
                   "own_decisions": counting.own, "fallback_decisions": counting.fallbacks,
                   "stream_rule_decisions": counting.stream_rule,
                   "own_actions": counting.own_actions})
    return record


RUNNERS: dict[str, Callable[[Context], dict]] = {
    "static-small": static_small, "esper": run_esper, "esper-width": run_esper_width,
    "esper-stack": run_esper_stack, "esper-late-slowdown": run_esper_late_slowdown,
    "esper-plateau-only": run_esper_plateau_only,
    "random": run_random,
    "schedule": run_schedule, "static-final-size": static_final_size,
    "esper-arch-static": run_esper_arch, "esper-arch-restarts": run_esper_arch_restarts,
    "gromo": run_gromo, "static-large": static_large,
    "learned": run_learned,
}
