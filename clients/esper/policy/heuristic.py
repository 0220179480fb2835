"""HeuristicPolicy: the default policy, and Tolaria's in-process local policy.

One decision per call, in this order of priority:
1. cull a live seed that produced NaN/Inf (INSTABILITY) or whose validation loss regressed
   beyond `regression_tolerance` while blended in (REGRESSION), or that stalled (NO_GAIN);
2. fossilize a probationary seed whose probation is over;
3. advance a seed whose next gate would pass (the runtime's gates decide for real);
4. for a host that declares its residual stream, widen the stream on its own signal (a
   plateau, or a slowdown paced from the run's start loss) while it has room and no seed
   has grown; after a widening that did not speed learning up, a second epoch first;
5. on a validation-loss plateau (or slowdown), germinate the best kernel over every
   dormant slot, by benefit per cost weighted up by the slot's ill health (see
   `esper.policy.health`); without one, germinate at once when every open slot's best
   kernel is cheap in compute (`eager_flops_fraction`): waiting would save no compute,
   and a seed grown at once trains longest;
6. otherwise wait, saying why.
Every decision goes through `safety.violation` before it leaves.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from esper.leyline.lifecycle import BLENDED_STAGES, LIVE_STAGES, gate_for, next_stage
from esper.leyline.v1 import lifecycle_pb2
from esper.leyline.v1.control_pb2 import (
    AdaptationDecision,
    AdvanceAction,
    BlendCurve,
    BlendSchedule,
    CullAction,
    CullReason,
    FossilizeAction,
    GerminateAction,
    WaitAction,
    WidenStreamAction,
)
from esper.leyline.v1.lifecycle_pb2 import SeedStage, SeedState
from esper.leyline.v1.signals_pb2 import SlotInfo
from esper.leyline.v1.urza_pb2 import KernelCandidate
from esper.policy import budget as budgeting
from esper.policy.context import PolicyContext
from esper.policy.decisions import Action, make_decision
from esper.policy.health import health_score
from esper.policy.plateau import is_plateau, is_slowing
from esper.policy.safety import (
    ADVANCEABLE_STAGES,
    live_seed_limit,
    violation,
    widen_stream_violation,
)

# The stage ints as plain module constants: SeedStage.X goes through a Python __getattr__
# (~1 us each), on every decision and step.
S = lifecycle_pb2
POLICY_NAME = "heuristic"
POLICY_VERSION = "1.0.0"

# Confidence the heuristic attaches to each kind of decision: a NaN is certain, a
# regression is measured but noisy, a plateau-triggered germination is a bet.
CONFIDENCE_INSTABILITY = 0.95
CONFIDENCE_REGRESSION = 0.8
CONFIDENCE_NO_GAIN = 0.7
CONFIDENCE_FOSSILIZE = 0.8
CONFIDENCE_ADVANCE = 0.9
CONFIDENCE_GERMINATE = 0.6
CONFIDENCE_WAIT = 1.0
# How much a slot's ill health raises the value of growing there: a slot with health 0
# counts its best kernel's benefit per cost (1 + HEALTH_WEIGHT) times. Health says where
# the host struggles, benefit per cost what a kernel can add; ranking slots by health alone
# sent every germination to the slot with the faintest symptom, whatever fitted there
# (measured on digits: a 33-parameter LayerNorm in fc1 while a conv block fitted conv2).
HEALTH_WEIGHT = 1.0
# alpha at or above this counts as fully blended (float ramps rarely land on exactly 1.0).
ALPHA_COMPLETE = 0.999


@dataclass(frozen=True)
class HeuristicConfig:
    """The heuristic's thresholds, each with its reason."""

    # Epochs without a `plateau_min_delta` improvement before growing: fewer reacts to noise.
    plateau_patience: int = 3
    # Relative improvement of the best validation loss that still counts as progress (1%).
    plateau_min_delta: float = 0.01
    # Grow on diminishing returns too (0: off, only plateaus): when the best validation loss
    # gained less over the last `slowdown_window` epochs than this fraction of its fastest
    # pace, the most it gained over any such window so far (esper.policy.plateau.is_slowing).
    # A capacity-bound host keeps improving slowly and never plateaus within its run, so the
    # plateau rule grows it late or never.
    slowdown_ratio: float = 0.0
    # Epochs in each window the slowdown rule compares; 0: plateau_patience. One epoch can
    # fire from epoch 3, when a small host's fastest learning is over: under a decaying
    # learning rate, a seed grown later trains less.
    slowdown_window: int = 0
    # Live seeds at once (the process's max_live_seeds applies too): one at a time keeps each
    # seed's effect on the validation loss attributable.
    max_live_seeds: int = 1
    # Steps after a germination before another one: let the last seed show its effect.
    germination_cooldown_steps: int = 0
    # Minimum TRAINING steps before asking for BLENDING (the schedule's training_steps too).
    training_steps: int = 100
    # Steps of the alpha ramp 0 -> 1.
    blend_steps: int = 100
    # Minimum SHADOWING steps before asking for PROBATIONARY.
    shadow_steps: int = 50
    # PROBATIONARY steps before fossilizing.
    probation_steps: int = 100
    # Seed learning rate (0: the host's).
    seed_learning_rate: float = 0.0
    # Cosine ramps start and end gently, so the host sees no jump in its input.
    blend_curve: int = BlendCurve.BLEND_CURVE_COSINE
    # Relative increase of the seed's loss over its stage-start value tolerated while the
    # seed is blended in; beyond it the seed is culled for REGRESSION. Tolaria reports a
    # smoothed train loss (EMA over ~50 steps); with no seed, its rise over 10-20 steps
    # reached 3-5% at the 99th percentile on the digits task, so 5% culls on a real
    # regression, not on batch noise (at 2%, 11 of 18 seeds were culled by chance).
    regression_tolerance: float = 0.05
    # Steps a live seed may sit in one stage (probation excluded) before it is culled for
    # NO_GAIN: a seed that never passes its gate only costs compute.
    stall_steps: int = 5000
    # Blueprint risk limit when the budget sets none.
    max_risk: float = budgeting.DEFAULT_MAX_RISK
    # Steps a decision stays valid: a decision based on an old snapshot is stale.
    decision_horizon_steps: int = 50
    # Steps to wait after a failed gate before asking for the same advance again.
    gate_retry_steps: int = 20
    # Suggested steps until the next decision when waiting.
    wait_steps: int = 10
    # Benefit assumed for a blueprint without field reports (validation-accuracy gain), per
    # unit of `capacity_factor` (a growth kernel of a few hundred params per channel gets
    # ~7x the prior of a mergeable adapter).
    prior_gain: float = 0.01
    # Parameter count that costs as much as the fixed cost of any germination.
    reference_params: int = 100_000
    # Latency (ms, p99) that costs as much as the fixed cost of any germination.
    reference_latency_ms: float = 1.0
    # What a kernel's compute costs, in fixed costs of a germination per model-forward: a
    # kernel whose forward FLOPs per example equal the whole model's (ResourceState.
    # model_flops_per_example) costs this much more. 0 here (Tamiyo's server defaults):
    # compute is free; the local policy's defaults (LOCAL_HEURISTIC) price it at 0.5.
    # Measured on the Fashion-MNIST CNN (benchmarks/morphogenesis.py, 5 seeds, cosine):
    # unpriced, a 3x3 residual block on the 28x28 conv wins and every step costs 3.9x the
    # host's; growth beats its own final architecture at matched FLOPs (4/1) but loses to
    # the static model of its size and to GroMo's procedure, each given the same compute
    # as more epochs (-0.61 and -0.80 pp, 1/4 each). At 0.5 the convs get SE blocks, the
    # run costs 1.03x the host's, beats GroMo at 68% of its FLOPs (4/1) and the static
    # model of its size at its FLOPs (5/0), but not its own final architecture trained
    # from the start (-0.26 pp, 2/3: cheap seeds grown at once save no compute for growth
    # to exploit). The MLP and transformer hosts grow the same seeds at 0.5 as unpriced,
    # to the bit; at 1.0 near-ties between residual blocks tip over.
    flops_weight: float = 0.0
    # The price of compute when the run has a training-FLOPs budget
    # (ResourceBudget.max_training_flops) and flops_weight leaves compute unpriced (0): a
    # user who bounds compute says it is scarce, and the budget only refuses what does not
    # fit, so the kernels that do fit are ranked by what they cost in it too. Measured on the
    # Fashion-MNIST CNN with GroMo's compute as the budget (5 seeds, cosine): unpriced, the
    # heuristic grows a depthwise-separable block at the signal and ends level with GroMo
    # (+0.09 pp, 2/3); priced at 0.5 its best kernels are cheap SE blocks, grown at once,
    # the run that beats GroMo in every seed at 68% of its FLOPs. 0: a budget prices nothing.
    budget_flops_weight: float = 0.5
    # Eager growth: when the best kernel of every open slot adds at most this fraction of
    # the model's forward FLOPs per example, they grow at once, one after another, without
    # waiting for a plateau or slowdown (0: never). Waiting is how growth saves compute;
    # when all the growth left is this cheap, the grown model costs what the host costs,
    # and the best use of the run is to train it from the start (a kernel at 10% grown at
    # step 0 rather than at epoch 3 of 20 adds 1.5% to the run's FLOPs). Each slot gets
    # the kernel the signal would grow there. While any open slot's best kernel is costly,
    # growth timing is what saves compute, and the signal times every seed, the cheap
    # ones too. Measured on the Fashion-MNIST CNN (benchmarks/morphogenesis.py, 5 seeds,
    # cosine): with compute priced (flops_weight 0.5) every slot's best kernel is cheap
    # (SE blocks at 2.7% and 5.4%, an MLP block at 2.4%), and growing them at once beat
    # growing them on the signal (epochs 3-5) by 0.58 pp in every seed; at the defaults
    # the conv slots' best kernel is a residual 3x3 block (265%), and growing only the
    # cheap MLP block at once gained nothing over the signal-timed run (-0.10 pp, 1 seed
    # of 3 ahead), so the signal keeps timing such runs. On the MLP and the transformer
    # the best kernels cost 32% and 44%: no eager growth.
    eager_flops_fraction: float = 0.10
    # Epochs the host trains alone before eager growth may start (0: from the first safe
    # point; the slot ranking then reads one window of layer health, which only orders the
    # cheap seeds, all of which grow; from the first epoch's end instead, the priced CNN
    # ended 0.55-0.77 pp lower in each of seeds 0-2).
    eager_after_epochs: int = 0
    # Residual-stream growth, for a host that declares its stream (TrainingSnapshot.stream):
    # on a plateau or slowdown, before any seed grows, widen the stream by this fraction of
    # its declared width (rounded to its feature multiple), while it is below its limit
    # (ResidualStreamState.max_width: 1.5x by default, so two widenings of 25%). 0: never.
    # A small transformer lacks stream width, which seeds cannot add (they grow blocks and
    # MLPs on a stream as narrow as before): on the char host, its own grown architecture
    # trained static scored 1.7 pp below the static model of its size with a wider stream.
    # Grown 32 -> 40 -> 48 after epochs 2 and 4, it beat d_model 48 trained from the start at
    # the same FLOPs in 5 of 5 seeds (benchmarks/probe_dmodel_growth.py). After a widening,
    # growth waits for a validation after it (else the same signal widens again at the next
    # safe point, and the stream grows 32 -> 48 at once). Seeds grow once the stream has
    # reached its limit, or on their own signal when the stream's has not fired. Not under
    # a training-FLOPs budget: a widening's cost per step is known only once it is made.
    # Measured as Esper's default on the char host (benchmarks/morphogenesis.py, 5 seeds;
    # README "Does growth pay?"): it widens after epochs 2 and 3 (2 and 4 at Adam 1e-3, see
    # stream_wait_unless_faster) and beats the static model of its final size and the same
    # architecture trained with the same restarts of Adam's moments at matched FLOPs.
    # Tolaria's local defaults widen by an eighth (with stream_first_epoch_pace on and
    # stream_wait_unless_faster off: after each of epochs 1-4 on the char host), which
    # ended above these two widenings of a quarter in every seed (+0.28 pp, 5/0).
    stream_growth_fraction: float = 0.25
    # The stream's own growth signal: plateau or slowdown as for seeds, with the pace of
    # learning measured from the loss the run started at (RunHistory.start_loss), so that
    # the first epoch's gain, the fastest, counts, and the slowdown is seen after epoch 2
    # rather than epoch 3. A widening grows every layer of the model: what it buys depends
    # on how long the wider model then trains under the decaying learning rate. On the
    # seeds' signal the char host's stream widened at epochs 3 and 6 (5-9 at Adam 3e-3),
    # and a fixed schedule widening at epochs 2 and 4 won by 0.32 pp (1/4) and 0.69 pp (0/4);
    # paced from the start it widened after epochs 2 and 3 at both rates: -0.14 pp (0/5) at
    # 1e-3, +0.06 pp (3/1) at 3e-3 (before stream_wait_unless_faster). Pacing a widened
    # stream from its own widening instead (its own learning curve) widened at epoch 5 or
    # never, and did worse (seeds 0-1).
    # False: the seeds' signal.
    stream_pace_from_start: bool = True
    # Paced from the start, the stream's signal fires at every validation once the first
    # epoch's fast gain is over, so the stream would widen at each of them. The epoch after
    # a widening says whether it was taken up: when it gained more than the epoch before
    # the widening, the stream's width is what binds, and the next widening comes at the
    # next signal; when it gained no more, the new features are still being fitted, and
    # the stream gets a second epoch at its new width before it widens again (nothing else
    # grows meanwhile: seeds are sized to the stream). On the char host the widened
    # stream's first epoch gained 0.73-0.93x the epoch before at Adam 1e-3, where widening
    # at epochs 2 and 4 beat 2 and 3 by 0.14 pp (5/0), and 1.4-2.3x at 3e-3, where 2 and
    # 3 beat 2 and 4 by 0.08 pp (4/1). With the rule, Esper widens at 2 and 4 at 1e-3
    # (+0.13 pp over 2 and 3, 5/0; level with the schedule at 2 and 4) and at 2 and 3 at
    # 3e-3, as before. False: widen at every signal (Tolaria's local defaults, whose
    # widenings are half as large: there, with the first epoch's signal off, the wait
    # held the char host's stream back to epochs 2, 4, 5 and 7, 0.28 and 0.06 pp below
    # widening after each of epochs 1-4 on seeds 0 and 1).
    stream_wait_unless_faster: bool = True
    # The seeds' slowdown paced from the run's start loss too, as the stream's is, so that
    # it can fire after epoch 2 rather than 3 (opt-in). Measured on the Fashion-MNIST MLP
    # (benchmarks/morphogenesis.py, 15 seeds, cosine): both seeds then grow in epoch 2
    # instead of 3-4, +0.08 pp over the default (10/5) for 4% more FLOPs, and still 0.07 pp
    # behind the fixed schedule that grows them after epochs 1 and 2 (6/9); on the CNN (5
    # seeds) +0.09 pp (3/2) for 5% more FLOPs, 0.09 pp behind that schedule (1/4).
    seed_pace_from_start: bool = False
    # The seeds' signal also fires once learning slowed within the first epoch: the
    # smoothed training loss gained less over the epoch's second half than slowdown_ratio
    # times its first half's gain (RunHistory.first_epoch_pace), so seeds can grow after
    # the first epoch, the soonest an epoch-end signal can see (off here, for long runs;
    # on in Tolaria's LOCAL_HEURISTIC: on both Fashion-MNIST hosts of
    # benchmarks/morphogenesis.py the seeds then grow right after epoch 1, +0.19 pp on the
    # MLP over 15 seeds and +0.24 on the CNN over 5 against growing at epochs 3-5). Not
    # while the host's residual stream has room: seeds are sized to the stream, which
    # widens on its own signal first.
    seed_first_epoch_pace: bool = False
    # The stream's signal also fires once learning slowed within the first epoch (the same
    # measure and ratio as seed_first_epoch_pace), so a stream with room can widen right
    # after it rather than after epoch 2 at the soonest (on in Tolaria's local defaults).
    # With widenings of a quarter of the width on the char host it widened at epochs 1
    # and 3 and did worse than at 2 and 4: -1.03 and -0.64 pp on seeds 0 and 1
    # (benchmarks/morphogenesis.py, Adam 1e-3). With widenings of an eighth at every
    # signal (the local defaults) it widens after each of epochs 1-4, +0.28 pp (5/0) over
    # the quarter-width widenings after epochs 2 and 4 (our reading: a smaller widening
    # leaves less to fit at once, so the stream can start growing sooner).
    stream_first_epoch_pace: bool = False
    # After a widening, growth waits for a validation after it (stream_hold), so that the
    # signal that widened the stream does not widen it again at the next safe point and
    # growth follows the widening's own effect. False: not after the widening that brought
    # the stream to its limit, where no widening can follow; seeds then grow on the signal
    # that came before it, from the next safe point.
    stream_hold_at_limit: bool = True


def capacity_factor(candidate: KernelCandidate) -> float:
    """How much function capacity a kernel adds to its slot: 1 + ln(1 + params / width),
    and 1 (no more than any other) for a blueprint that merges into the host layer or has
    no parameters. A mergeable adapter (IA3, LoRA) only reparameterises the host layer: the
    model can represent nothing new, so a capacity-bound host gains nothing from it; a
    residual branch (MLP, conv block) adds depth and units. The log keeps a large kernel
    from winning on size alone (its cost term grows linearly)."""
    params = candidate.kernel.stats.params
    if candidate.blueprint.metadata.mergeable or params <= 0:
        return 1.0
    width = max(1, candidate.kernel.target.shape.channels)
    return 1.0 + math.log1p(params / width)


def benefit_per_cost(candidate: KernelCandidate, config: HeuristicConfig,
                     model_flops: float = 0.0) -> float:
    """(prior_gain * capacity + max(0, past gain)) * (1 - risk) / (1 + params/ref +
    latency/ref + flops_weight * kernel FLOPs / model FLOPs). Without field reports every
    blueprint gets the same prior, so the capacity factor is what tells a growth kernel
    from a cheap rescaling (without it the cheapest, lowest-risk kernel always won: IA3,
    which cannot add capacity). `model_flops` is the model's forward FLOPs per example
    (ResourceState.model_flops_per_example); 0 (unknown) leaves compute unpriced."""
    meta, stats = candidate.blueprint.metadata, candidate.kernel.stats
    gain = meta.past_accuracy_gain_estimate if math.isfinite(meta.past_accuracy_gain_estimate) else 0.0
    prior = config.prior_gain * capacity_factor(candidate)
    benefit = (prior + max(0.0, gain)) * (1.0 - min(1.0, max(0.0, meta.risk_score)))
    latency = stats.latency_p99_ms if math.isfinite(stats.latency_p99_ms) else 0.0
    cost = 1.0 + stats.params / config.reference_params + max(0.0, latency) / config.reference_latency_ms
    return benefit / (cost + compute_cost(stats.flops, model_flops, config))


def flops_share(kernel_flops: float, model_flops: float) -> float | None:
    """A kernel's forward FLOPs as a fraction of the model's (both per example); None when
    the model's count is unknown (0) or not finite, or the kernel's is not a count."""
    if not (model_flops > 0 and math.isfinite(model_flops) and kernel_flops >= 0):
        return None
    return kernel_flops / model_flops


def compute_cost(kernel_flops: float, model_flops: float, config: HeuristicConfig) -> float:
    """The FLOPs term of a kernel's cost: flops_weight per model-forward it adds; 0 when
    either count is unknown (0) or not finite."""
    share = flops_share(kernel_flops, model_flops)
    return config.flops_weight * share if share else 0.0


_NOT_ALL_CHEAP = ("eager growth waits: not every open slot's best kernel is cheap "
                  "(growth timing saves compute, so the signal times every seed)")


def eager_state(ctx: PolicyContext) -> tuple | None:
    """What eager growth's outcome depends on, besides the library: the model's FLOPs, the
    seeds' parameters and every slot's stage and embargo. While it is unchanged, a check
    that found a costly kernel to grow would find it again (a change of the library is
    seen at the next change of these, or on the growth signal). None under a
    training-FLOPs budget: what it affords grows as the remaining steps shrink, so every
    check is made afresh."""
    if ctx.budget.max_training_flops > 0:
        return None
    res, step = ctx.snapshot.resources, ctx.step
    return (res.model_flops_per_example, res.seed_params,
            tuple((s.slot_id, s.stage, s.embargo_until_step > step) for s in ctx.seeds.values()))


def stream_features(ctx: PolicyContext, fraction: float) -> int:
    """Features one widening of the residual stream adds: `fraction` of its declared width
    rounded to its feature multiple (at least one multiple), or what room is left below its
    limit; 0 when the host declares no stream, `fraction` is 0 or no room is left."""
    if fraction <= 0 or not ctx.snapshot.HasField("stream"):
        return 0
    stream = ctx.snapshot.stream
    multiple = max(1, stream.feature_multiple)
    step = max(multiple, round(fraction * stream.declared_width / multiple) * multiple)
    room = (stream.max_width - stream.width) // multiple * multiple
    return min(step, max(room, 0))


def stream_widening(ctx: PolicyContext, fraction: float) -> int:
    """The features the heuristic widens the residual stream by now, on a growth signal:
    stream_features while the stream has room, no seed has grown (seeds are sized to the
    stream as it is), no training-FLOPs budget is set and nothing in the widening violates
    the safety rules; else 0."""
    features = stream_features(ctx, fraction)
    if not features or ctx.budget.max_training_flops > 0 \
            or any(s.stage != S.SEED_STAGE_DORMANT for s in ctx.seeds.values()) \
            or widen_stream_violation(features, ctx) is not None:
        return 0
    return features


def blend_schedule(config: HeuristicConfig) -> BlendSchedule:
    """The training and blending schedule germinations carry."""
    return BlendSchedule(
        curve=config.blend_curve, blend_steps=config.blend_steps, training_steps=config.training_steps,
        learning_rate=config.seed_learning_rate, shadow_steps=config.shadow_steps,
        probation_steps=config.probation_steps,
    )


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


class HeuristicPolicy:
    """The documented rules above; stateless, so one instance serves many runs."""

    name = POLICY_NAME

    def __init__(self, config: HeuristicConfig | None = None) -> None:
        self.config = config or HeuristicConfig()
        # What ranking() ranks with under a training-FLOPs budget (the config is frozen).
        self._budget_priced = dataclasses.replace(self.config,
                                                  flops_weight=self.config.budget_flops_weight)

    @property
    def version(self) -> str:
        return f"{POLICY_NAME}@{POLICY_VERSION}"

    def decide(self, ctx: PolicyContext) -> AdaptationDecision:
        action, confidence, rationale = self._choose(ctx)
        decision = self._make(ctx, action, confidence, rationale)
        problem = violation(decision, ctx, *self.limits(ctx))
        if problem:
            return self._make(ctx, self._wait(), CONFIDENCE_WAIT, f"withheld {rationale!r}: {problem}")
        return decision

    def growth_signal(self, ctx: PolicyContext) -> str | None:
        """Why the seeds may grow now by this heuristic's rules (a plateau, diminishing
        returns, the first epoch's pace), or None; whether a seed then grows depends on the
        slots, the budget and the live seeds too. The learned policy reads it as a feature."""
        return self._seed_signal(ctx)

    def stream_decision(self, ctx: PolicyContext) -> AdaptationDecision | None:
        """The widening of the residual stream this policy makes now (rule 4), or None: the
        rule a policy with no widening in its own action space (the GNN) defers to. Rules
        1-3 concern live seeds, and the stream widens only while none is live, so none of
        them could come first."""
        chosen = self._widening(ctx)
        if chosen is None:
            return None
        decision = self._make(ctx, *chosen)
        return None if violation(decision, ctx, *self.limits(ctx)) else decision

    # -- plumbing ---------------------------------------------------------------------------

    def _make(self, ctx: PolicyContext, action: Action, confidence: float, rationale: str) -> AdaptationDecision:
        return make_decision(
            ctx, action, policy_version=self.version, horizon_steps=self.config.decision_horizon_steps,
            confidence=confidence, rationale=rationale,
        )

    def _wait(self) -> WaitAction:
        return WaitAction(steps=self.config.wait_steps)

    def ranking(self, ctx: PolicyContext) -> HeuristicConfig:
        """The config kernels are ranked with: compute priced at budget_flops_weight under a
        training-FLOPs budget when flops_weight leaves it unpriced, else this policy's."""
        c = self.config
        if c.flops_weight > 0 or c.budget_flops_weight <= 0 or ctx.budget.max_training_flops <= 0:
            return c
        return self._budget_priced

    def limits(self, ctx: PolicyContext) -> tuple[float, int]:
        """(risk limit, live-seed limit) this policy holds decisions to in `ctx`: the ones
        a policy that falls back on it (the learned policy, Simic's exploration) checks
        its own decisions against."""
        return self._risk(ctx), self._max_live(ctx)

    def _risk(self, ctx: PolicyContext) -> float:
        return budgeting.max_risk(ctx, self.config.max_risk)

    def _max_live(self, ctx: PolicyContext) -> int:
        return live_seed_limit(ctx, self.config.max_live_seeds)

    def _choose(self, ctx: PolicyContext) -> tuple[Action, float, str]:
        seeds = [ctx.seeds[s.slot_id] for s in ctx.graph.slots if s.slot_id in ctx.seeds]
        for rule in (self._cull, self._fossilize, self._advance):
            for seed in seeds:
                chosen = rule(ctx, seed)
                if chosen is not None:
                    return chosen
        return self._germinate(ctx)

    # -- rules on existing seeds ----------------------------------------------------------

    def _cull(self, ctx: PolicyContext, seed: SeedState) -> tuple[Action, float, str] | None:
        if seed.stage not in LIVE_STAGES:
            return None
        m = seed.metrics
        if m.non_finite_count:
            why = f"seed {seed.seed_id} in {seed.slot_id} produced non-finite values"
            return self._cull_action(seed, CullReason.CULL_REASON_INSTABILITY, why), CONFIDENCE_INSTABILITY, why
        regression = self._regression(seed)
        if regression is not None:
            return self._cull_action(seed, CullReason.CULL_REASON_REGRESSION, regression), CONFIDENCE_REGRESSION, regression
        if seed.stage != S.SEED_STAGE_PROBATIONARY and seed.steps_in_stage > self.config.stall_steps:
            why = (f"seed {seed.seed_id} in {seed.slot_id} stalled {seed.steps_in_stage} steps in "
                   f"{SeedStage.Name(seed.stage)} (limit {self.config.stall_steps})")
            return self._cull_action(seed, CullReason.CULL_REASON_NO_GAIN, why), CONFIDENCE_NO_GAIN, why
        return None

    def _regression(self, seed: SeedState) -> str | None:
        start, now = seed.metrics.val_loss_at_stage_start, seed.metrics.val_loss
        if seed.stage not in BLENDED_STAGES or not _finite(start, now) or start <= 0:
            return None
        limit = start * (1.0 + self.config.regression_tolerance)
        if now <= limit:
            return None
        return (f"validation loss {now:.4f} with seed {seed.seed_id} in {seed.slot_id} exceeds "
                f"{start:.4f} x (1 + {self.config.regression_tolerance}) = {limit:.4f}")

    @staticmethod
    def _cull_action(seed: SeedState, reason: int, detail: str) -> CullAction:
        return CullAction(slot_id=seed.slot_id, reason=reason, detail=detail)

    def _gate_recently_failed(self, ctx: PolicyContext, seed: SeedState, target: int) -> bool:
        gate = gate_for(seed.stage, target)
        last = seed.last_gate
        return (
            gate is not None and last.level == gate and not last.passed
            and ctx.step < last.step + self.config.gate_retry_steps
        )

    def _fossilize(self, ctx: PolicyContext, seed: SeedState) -> tuple[Action, float, str] | None:
        if seed.stage != S.SEED_STAGE_PROBATIONARY or seed.steps_in_stage < self.config.probation_steps:
            return None
        if self._gate_recently_failed(ctx, seed, S.SEED_STAGE_FOSSILIZED):
            return None
        why = f"seed {seed.seed_id} in {seed.slot_id} held its gain through {seed.steps_in_stage} probation steps"
        return FossilizeAction(slot_id=seed.slot_id), CONFIDENCE_FOSSILIZE, why

    def _ready(self, seed: SeedState) -> str | None:
        """Why the seed looks ready for its next stage, or None."""
        c, stage = self.config, seed.stage
        if stage == S.SEED_STAGE_GERMINATED:
            return "germinated seed runs finite"
        if stage == S.SEED_STAGE_TRAINING and seed.steps_in_stage >= c.training_steps:
            return f"{seed.steps_in_stage} training steps >= {c.training_steps}"
        if stage == S.SEED_STAGE_BLENDING and seed.alpha >= ALPHA_COMPLETE:
            return f"alpha {seed.alpha:.3f} reached 1"
        if stage == S.SEED_STAGE_SHADOWING and seed.steps_in_stage >= c.shadow_steps:
            return f"{seed.steps_in_stage} shadow steps >= {c.shadow_steps}"
        return None

    def _advance(self, ctx: PolicyContext, seed: SeedState) -> tuple[Action, float, str] | None:
        if seed.stage not in ADVANCEABLE_STAGES:
            return None
        target = next_stage(seed.stage)
        reason = self._ready(seed)
        if target is None or reason is None or self._gate_recently_failed(ctx, seed, target):
            return None
        why = f"advance seed {seed.seed_id} in {seed.slot_id} to {SeedStage.Name(target)}: {reason}"
        return AdvanceAction(slot_id=seed.slot_id, target_stage=target), CONFIDENCE_ADVANCE, why

    # -- growth ---------------------------------------------------------------------------

    def _germinate(self, ctx: PolicyContext) -> tuple[Action, float, str]:
        # Without a plateau or slowdown, growth is eager or waits: see eager_flops_fraction.
        widening = self._widening(ctx)
        if widening is not None:
            return widening
        no_signal = self._no_signal(ctx)
        but = f"{no_signal}; " if no_signal else "plateau, but "
        blocked = self._growth_blocker(ctx, no_signal, but)
        if blocked:
            return self._wait(), CONFIDENCE_WAIT, blocked
        state = eager_state(ctx) if no_signal else None
        idle = ctx.history.eager_idle
        if state is not None and idle is not None and idle[0] == state:
            return self._wait(), CONFIDENCE_WAIT, idle[1]  # as found in this same state
        slots = ctx.open_slots()
        if not slots:
            return self._wait(), CONFIDENCE_WAIT, f"{but}no open slot (dormant, outside embargo, not stacked on a live seed)"
        unavailable = ctx.candidates.unavailable_reason
        if unavailable:
            return self._wait(), CONFIDENCE_WAIT, f"{but}no germination: {unavailable}"
        refusals: list[str] = []
        check = budgeting.BudgetCheck(ctx, self._risk(ctx))
        best: tuple[float, SlotInfo, float, KernelCandidate] | None = None
        model_flops = ctx.snapshot.resources.model_flops_per_example
        ranking = self.ranking(ctx)
        for slot in slots:
            pick = self._best_candidate(ctx, slot, check, refusals, model_flops, ranking)
            if pick is None:
                continue
            if no_signal and not self._cheap(pick, model_flops):
                # A costly seed is still to grow: its timing is what saves compute, and the
                # signal times every seed (see eager_flops_fraction).
                return self._eager_idle(ctx, state, f"{but}{_NOT_ALL_CHEAP}")
            health = health_score(ctx.health_of(slot))
            value = benefit_per_cost(pick, ranking, model_flops) * (1.0 + HEALTH_WEIGHT * (1.0 - health))
            if best is None or value > best[0]:
                best = (value, slot, health, pick)
        if best is not None:
            return self._germination(ctx, best[1], best[2], best[3], ranking,
                                     eager=no_signal is not None)
        detail = "; ".join(refusals[:5]) or "the library offered no kernel for any open slot"
        if no_signal:  # nothing to grow: the same until the run changes
            return self._eager_idle(ctx, state, f"{but}no affordable candidate: {detail}")
        return self._wait(), CONFIDENCE_WAIT, f"{but}no affordable candidate: {detail}"

    def _widening(self, ctx: PolicyContext) -> tuple[Action, float, str] | None:
        """Widen the residual stream on its growth signal (see stream_widening,
        stream_pace_from_start and stream_first_epoch_pace), else None: then seeds are
        considered."""
        features = stream_widening(ctx, self.config.stream_growth_fraction)
        if not features or self.stream_hold(ctx):
            return None
        start = ctx.history.start_loss if self.config.stream_pace_from_start else math.nan
        trigger = self._signal(ctx, start)
        if trigger is None and self.config.stream_first_epoch_pace:
            trigger = self._first_epoch_slowed(ctx)
        if trigger is None:
            return None
        stream = ctx.snapshot.stream
        why = (f"{trigger}; widen the residual stream {stream.width} -> {stream.width + features} "
               f"(limit {stream.max_width}, {features * stream.params_per_feature} parameters) "
               "before growing seeds on it")
        return WidenStreamAction(features=features), CONFIDENCE_GERMINATE, why

    def _signal(self, ctx: PolicyContext, start_loss: float = math.nan) -> str | None:
        """The growth signal: why to grow now (the validation loss plateaued, or its gains
        diminished, their pace measured from `start_loss` when it is finite), or None."""
        c = self.config
        losses = ctx.history.val_losses
        if is_plateau(losses, c.plateau_patience, c.plateau_min_delta, ctx.snapshot.metrics.plateau_epochs):
            return "validation loss plateaued"
        if is_slowing(losses, c.slowdown_window or c.plateau_patience, c.slowdown_ratio, start_loss):
            return "validation loss gains are diminishing (slowdown" + \
                (", paced from the run's start loss)" if math.isfinite(start_loss) else ")")
        return None

    def stream_hold(self, ctx: PolicyContext) -> str | None:
        """Why growth of any kind waits on the stream's last widening, or None: the stream
        widened after the latest validation (growth on new evidence only, else the signal
        that widened it widens it again at the next safe point), or it is settling (see
        _stream_settling). The learned policy, which widens by this rule, germinates by it
        too: not while it holds."""
        stream = ctx.snapshot.stream
        at_limit = stream.width >= stream.max_width
        if stream.widenings and ctx.history.last_epoch <= stream.last_widened_epoch \
                and (self.config.stream_hold_at_limit or not at_limit):
            return (f"the residual stream widened at epoch {stream.last_widened_epoch}; "
                    "growth waits for a validation after it")
        return self._stream_settling(ctx)

    def _stream_settling(self, ctx: PolicyContext) -> str | None:
        """Why growth waits a second validation after the stream's last widening, or None:
        the stream still has room, the latest validation is the first after the widening,
        and the epoch it ends gained no more than the epoch before the widening (see
        stream_wait_unless_faster). The gains are read off the last validations, one per
        epoch (the epoch before the first validation gains from the start loss)."""
        stream = ctx.snapshot.stream
        if not self.config.stream_wait_unless_faster or not stream.widenings \
                or ctx.history.last_epoch != stream.last_widened_epoch + 1 \
                or not stream_features(ctx, self.config.stream_growth_fraction):
            return None
        losses = ctx.history.val_losses
        if len(losses) < 2:
            return None
        before = losses[-3] if len(losses) >= 3 else ctx.history.start_loss
        if not math.isfinite(before):
            return None
        gain_before, gain_after = before - losses[-2], losses[-2] - losses[-1]
        if gain_after > gain_before:
            return None
        return (f"the residual stream's widening at epoch {stream.last_widened_epoch} did not "
                f"speed learning up (validation loss gained {gain_after:.4g} in the epoch after "
                f"it, {gain_before:.4g} in the epoch before): a second epoch at width "
                f"{stream.width} before it widens again")

    def _eager_idle(self, ctx: PolicyContext, state: tuple, why: str) -> tuple[Action, float, str]:
        """Wait, remembering that eager growth found nothing to grow in this state (and why)."""
        ctx.history.eager_idle = (state, why)
        return self._wait(), CONFIDENCE_WAIT, why

    def _seed_signal(self, ctx: PolicyContext) -> str | None:
        """The seeds' growth signal (paced from the run's start loss with
        seed_pace_from_start; from the first epoch's pace with seed_first_epoch_pace), or
        None."""
        start = ctx.history.start_loss if self.config.seed_pace_from_start else math.nan
        signal = self._signal(ctx, start)
        if signal is None and self.config.seed_first_epoch_pace:
            return self._first_epoch_signal(ctx)
        return signal

    def _first_epoch_signal(self, ctx: PolicyContext) -> str | None:
        """The seeds' signal from the first epoch's pace (see seed_first_epoch_pace), or None:
        its fast learning was over before it ended, and no stream is still to widen."""
        if stream_features(ctx, self.config.stream_growth_fraction):
            return None
        return self._first_epoch_slowed(ctx)

    def _first_epoch_slowed(self, ctx: PolicyContext) -> str | None:
        """Why learning slowed within the first epoch (its pace below slowdown_ratio), or None."""
        c, pace = self.config, ctx.history.first_epoch_pace
        if not (c.slowdown_ratio > 0 and pace < c.slowdown_ratio):
            return None
        return (f"training loss gains diminished within the first epoch (its second half "
                f"gained {pace:.2f}x the first half's, below {c.slowdown_ratio})")

    def _no_signal(self, ctx: PolicyContext) -> str | None:
        """Why growth has no signal (the validation loss neither plateaued nor slowed), or
        None when it has one."""
        if self._seed_signal(ctx) is not None:
            return None
        return "validation loss still improving (no plateau" + \
            (", no slowdown)" if self.config.slowdown_ratio > 0 else ")")

    def _growth_blocker(self, ctx: PolicyContext, no_signal: str | None, but: str) -> str | None:
        c = self.config
        max_live = self._max_live(ctx)
        if max_live and ctx.live_seed_count() >= max_live:
            return f"{ctx.live_seed_count()} live seeds, limit {max_live}"
        if no_signal and not (c.eager_flops_fraction > 0
                              and len(ctx.history.val_losses) >= c.eager_after_epochs):
            return no_signal
        hold = self.stream_hold(ctx)
        if hold:
            return f"{but}{hold}"
        last = max((s.germinated_at_step for s in ctx.seeds.values() if s.seed_id), default=None)
        if last is not None and c.germination_cooldown_steps and ctx.step < last + c.germination_cooldown_steps:
            return f"germination cooldown until step {last + c.germination_cooldown_steps}"
        left = budgeting.params_left(ctx)
        if left == 0:
            return f"{but}the parameter budget is spent"
        return None

    def _cheap(self, pick: KernelCandidate, model_flops: float) -> bool:
        """Whether the kernel adds at most eager_flops_fraction of the model's forward FLOPs
        per example (an unknown count is never cheap)."""
        share = flops_share(pick.kernel.stats.flops, model_flops)
        return share is not None and share <= self.config.eager_flops_fraction

    def _best_candidate(
        self, ctx: PolicyContext, slot: SlotInfo, check: budgeting.BudgetCheck, refusals: list[str],
        model_flops: float, ranking: HeuristicConfig,
    ) -> KernelCandidate | None:
        offered = ctx.candidates.candidates(slot, ctx.budget)
        if not offered:
            refusals.append(f"no kernel offered for slot {slot.slot_id}")
            return None
        ok, refused = check.split(offered, slot)
        refusals.extend(refused)
        if not ok:
            return None
        return max(ok, key=lambda c: (benefit_per_cost(c, ranking, model_flops), c.score))

    def _germination(
        self, ctx: PolicyContext, slot: SlotInfo, health: float, pick: KernelCandidate,
        ranking: HeuristicConfig, eager: bool = False,
    ) -> tuple[Action, float, str]:
        c = self.config
        schedule = blend_schedule(c)
        ref = pick.kernel.blueprint_ref or budgeting.blueprint_ref(pick.blueprint)
        action = GerminateAction(
            slot_id=slot.slot_id, blueprint_ref=ref, kernel_id=pick.kernel.kernel_id,
            kernel_sha256=pick.kernel.sha256, schedule=schedule,
        )
        model_flops = ctx.snapshot.resources.model_flops_per_example
        if eager:
            share = flops_share(pick.kernel.stats.flops, model_flops)
            trigger = (f"a cheap kernel grows at once ({share:.1%} of the model's forward FLOPs, "
                       f"at most {c.eager_flops_fraction:.0%}: waiting would save no compute)")
        else:  # not eager: the signal fired
            trigger = self._seed_signal(ctx)
        why = (f"{trigger}; slot {slot.slot_id} (health {health:.2f}) with "
               f"kernel {pick.kernel.kernel_id} ({ref}) has the best benefit per cost "
               f"{benefit_per_cost(pick, ranking, model_flops):.4g}"
               + (f" (compute priced at {ranking.flops_weight:g} under the training-FLOPs budget)"
                  if ranking is not c else ""))
        return action, CONFIDENCE_GERMINATE, why
