'use strict';
// A simulated host model for the examples: a chain of Linear layers of one width with a
// seed slot after each, its ModelGraph, and the seeds' lifecycle as Kasmina would run it
// (tamiyo.proto and lifecycle.proto say what each stage means).

const crypto = require('node:crypto');

// The main path of the lifecycle (lifecycle.proto): each stage and the one it advances to.
const NEXT_STAGE = {
  SEED_STAGE_GERMINATED: 'SEED_STAGE_TRAINING',
  SEED_STAGE_TRAINING: 'SEED_STAGE_BLENDING',
  SEED_STAGE_BLENDING: 'SEED_STAGE_SHADOWING',
  SEED_STAGE_SHADOWING: 'SEED_STAGE_PROBATIONARY',
  SEED_STAGE_PROBATIONARY: 'SEED_STAGE_FOSSILIZED',
};
const LIVE_STAGES = new Set(Object.keys(NEXT_STAGE));
// Blend ramp length when a germination's schedule gives none.
const DEFAULT_BLEND_STEPS = 100;

function modelGraph(layers, width) {
  const graph = { nodes: [], edges: [], slots: [] };
  for (let i = 0; i < layers; i += 1) {
    const slotId = `s${i}`;
    graph.nodes.push({ node_id: `n${i}`, op_type: 'Linear', in_dim: width, out_dim: width,
      params: width * width + width, slot_id: slotId, depth: i });
    if (i > 0) graph.edges.push({ source: `n${i - 1}`, target: `n${i}` });
    graph.slots.push({ slot_id: slotId, node_id: `n${i}`,
      shape: { kind: 'SLOT_KIND_FEATURES', channels: width } });
  }
  return graph;
}

// Seed id format of esper.leyline.ids: "seed-" and 12 hex digits.
function newSeedId() {
  return `seed-${crypto.randomBytes(6).toString('hex')}`;
}

class SimulatedSeeds {
  constructor(graph) {
    this.seeds = new Map(graph.slots.map((s) => [s.slot_id, dormant(s.slot_id)]));
    this.births = new Map(); // slot id -> { decisionId, step }
  }

  // The SeedStates the client reports (it is the truth for them).
  states() {
    return [...this.seeds.values()].map(({ blendSteps, ...s }) => ({ ...s, metrics: { ...s.metrics } }));
  }

  // Training between two snapshots: every live seed spends `steps` more in its stage.
  train(steps) {
    for (const seed of this.seeds.values()) {
      if (!LIVE_STAGES.has(seed.stage)) continue;
      seed.steps_in_stage += steps;
      if (seed.stage === 'SEED_STAGE_BLENDING') seed.alpha = Math.min(1, seed.steps_in_stage / seed.blendSteps);
    }
  }

  // Apply one decision at a safe point: the DecisionAck to send, and a FieldReport when a
  // seed's life ended. Every decision is checked against the lifecycle, whoever sent it.
  apply(decision, step, runId) {
    const ack = { decision_id: decision.decision_id, run_id: runId, step };
    if (step > decision.expires_at_step) {
      return { ack: { ...ack, status: 'ACK_STATUS_EXPIRED', reason: `step ${step} is past ${decision.expires_at_step}` } };
    }
    const action = decision[decision.action];
    const seed = this.seeds.get(action.slot_id);
    if (seed === undefined) return { ack: { ...ack, status: 'ACK_STATUS_REJECTED', reason: `unknown slot ${action.slot_id}` } };
    const refuse = (why) => ({ ack: { ...ack, status: 'ACK_STATUS_REJECTED', reason: why } });
    switch (decision.action) {
      case 'germinate':
        if (seed.stage !== 'SEED_STAGE_DORMANT') return refuse(`slot ${seed.slot_id} is ${seed.stage}`);
        Object.assign(seed, { seed_id: newSeedId(), stage: 'SEED_STAGE_GERMINATED', steps_in_stage: 0,
          blueprint_ref: action.blueprint_ref, kernel_id: action.kernel_id, kernel_digest: action.kernel_sha256,
          germinated_at_step: step, blendSteps: (action.schedule && action.schedule.blend_steps) || DEFAULT_BLEND_STEPS });
        this.births.set(seed.slot_id, { decisionId: decision.decision_id, step });
        return { ack: { ...ack, status: 'ACK_STATUS_APPLIED', reason: 'germinated', seed_id: seed.seed_id } };
      case 'advance':
      case 'fossilize': {
        const target = decision.action === 'fossilize' ? 'SEED_STAGE_FOSSILIZED' : action.target_stage;
        if (NEXT_STAGE[seed.stage] !== target) return refuse(`${seed.stage} cannot advance to ${target}`);
        seed.stage = target;
        seed.steps_in_stage = 0;
        if (target === 'SEED_STAGE_SHADOWING') seed.alpha = 1;
        const applied = { ack: { ...ack, status: 'ACK_STATUS_APPLIED', reason: `advanced to ${target}`, seed_id: seed.seed_id } };
        if (target === 'SEED_STAGE_FOSSILIZED') applied.report = this.report(seed, step, runId);
        return applied;
      }
      case 'cull':
        if (!LIVE_STAGES.has(seed.stage)) return refuse(`slot ${seed.slot_id} holds no live seed`);
        seed.stage = 'SEED_STAGE_CULLED';
        seed.cull_reason = action.reason;
        return { ack: { ...ack, status: 'ACK_STATUS_APPLIED', reason: 'culled', seed_id: seed.seed_id },
          report: this.report(seed, step, runId, action.reason) };
      default:
        return refuse(`action ${decision.action} is not applied by this client`);
    }
  }

  report(seed, step, runId, cullReason = 'CULL_REASON_UNSPECIFIED') {
    const birth = this.births.get(seed.slot_id);
    return { run_id: runId, seed_id: seed.seed_id, slot_id: seed.slot_id, blueprint_ref: seed.blueprint_ref,
      kernel_id: seed.kernel_id, germinate_decision_id: birth.decisionId, final_stage: seed.stage,
      val_loss_before: 1.0, val_loss_after: 1.0, lifetime_steps: step - birth.step, cull_reason: cullReason,
      germinated_at_step: birth.step, ended_at_step: step };
  }
}

function dormant(slotId) {
  return { seed_id: '', slot_id: slotId, stage: 'SEED_STAGE_DORMANT', blueprint_ref: '', kernel_id: '',
    kernel_digest: '', alpha: 0, steps_in_stage: 0, germinated_at_step: 0, blendSteps: DEFAULT_BLEND_STEPS,
    metrics: { params: 0, val_loss_at_stage_start: 1.0, val_loss: 1.0 } };
}

// A snapshot of the simulated run. The loss has flattened: `plateauEpochs` epochs without
// improvement is what makes a policy grow the model.
function snapshot({ runId, step, epoch, sequence, epochEnd, seeds, plateauEpochs }) {
  return {
    run_id: runId, step, epoch, sequence, epoch_end: epochEnd,
    time: { seconds: Math.floor(Date.now() / 1000), nanos: 0 },
    metrics: { train_loss: 1.0, val_loss: 1.0, best_val_loss: 1.0, train_accuracy: 0.5, val_accuracy: 0.5,
      learning_rate: 0.01, grad_norm: 1.0, plateau_epochs: plateauEpochs },
    seeds,
    resources: { device: 'cpu' },
  };
}

module.exports = { modelGraph, snapshot, SimulatedSeeds, newSeedId, NEXT_STAGE };
