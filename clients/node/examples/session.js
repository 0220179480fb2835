#!/usr/bin/env node
'use strict';
// A full Tamiyo Session for a simulated run, following tamiyo.proto's protocol: open, a
// snapshot every `snapshot_every_steps` steps and the epoch-end repeat at each epoch's
// last step, each decision applied at the next safe point and acked exactly once, a field
// report when a seed's life ends, heartbeats when idle; then the stream is closed and
// re-opened with the same run id to show the resume (acked ids and seed states sent, no
// decision re-sent).
//   node clients/node/examples/session.js [--address HOST:PORT] [--run-id ID] [--json]
// The address is --address, else $ESPER_TAMIYO_ADDRESS, else 127.0.0.1:50053; TLS and the
// token from ESPER_TLS* and ESPER_TOKEN. The run ends when a seed is fossilized or culled,
// or after --max-steps. Exit 1 when Tamiyo cannot be reached, refuses or ends the session.

const { parseArgs } = require('node:util');
const crypto = require('node:crypto');
const esper = require('../lib/esper');
const { TamiyoSession } = require('../lib/session');
const { modelGraph, snapshot, SimulatedSeeds } = require('../lib/model');

const CLIENT_VERSION = 'esper-node 0.1.0';
// Epochs of improving loss before the simulated run plateaus.
const IMPROVING_EPOCHS = 2;

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

function options() {
  const { values } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.ESPER_TAMIYO_ADDRESS || '127.0.0.1:50053' },
      'run-id': { type: 'string', default: `run-node-${crypto.randomBytes(6).toString('hex')}` },
      layers: { type: 'string', default: '4' },
      width: { type: 'string', default: '16' },
      policy: { type: 'string', default: '' },
      'max-steps': { type: 'string', default: '5000' },
      'steps-per-epoch': { type: 'string', default: '50' },
      // Wall time of the steps between two snapshots: the decisions of one snapshot arrive
      // while the next steps "train", as in a real loop.
      'pace-ms': { type: 'string', default: '20' },
      json: { type: 'boolean', default: false },
    },
  });
  return { ...values, layers: Number(values.layers), width: Number(values.width),
    maxSteps: Number(values['max-steps']), stepsPerEpoch: Number(values['steps-per-epoch']),
    paceMs: Number(values['pace-ms']), runId: values['run-id'] };
}

class Run {
  constructor(opts, stub) {
    this.opts = opts;
    this.stub = stub;
    this.graph = modelGraph(opts.layers, opts.width);
    this.seeds = new SimulatedSeeds(this.graph);
    this.step = 0;
    this.epoch = 0;
    this.sequence = 0;
    this.acked = [];
    this.lastApplied = '';
    this.decisions = [];
    this.acks = {};
    this.fieldReports = 0;
    this.snapshots = 0;
    this.ended = false;
  }

  openMessage() {
    return { run_id: this.opts.runId, contract_version: esper.contractVersion(), client_version: CLIENT_VERSION,
      graph: this.graph, capabilities: { device: 'cpu', dtype: 'DTYPE_FLOAT32', max_live_seeds: 1 },
      budget: {}, policy: this.opts.policy, seeds: this.seeds.states(),
      last_applied_decision_id: this.lastApplied, acked_decision_ids: this.acked };
  }

  // A safe point: every decision that arrived is applied (or refused) and acked once.
  applyDecisions(session) {
    for (const decision of session.takeDecisions()) {
      const action = decision[decision.action];
      const { ack, report } = this.seeds.apply(decision, this.step, this.opts.runId);
      this.decisions.push({ decision_id: decision.decision_id, action: decision.action, slot_id: action.slot_id,
        target_stage: action.target_stage, blueprint_ref: action.blueprint_ref, issued_at_step: decision.issued_at_step,
        status: ack.status });
      session.ack(ack);
      this.acked.push(ack.decision_id);
      this.acks[ack.status] = (this.acks[ack.status] || 0) + 1;
      if (ack.status === 'ACK_STATUS_APPLIED') this.lastApplied = ack.decision_id;
      if (report) {
        session.fieldReport(report);
        this.fieldReports += 1;
        this.ended = true; // one seed's whole life is the example
      }
    }
  }

  send(session, epochEnd) {
    this.sequence += 1;
    this.snapshots += 1;
    const plateau = this.epoch >= IMPROVING_EPOCHS ? this.epoch : 0;
    session.snapshot(snapshot({ runId: this.opts.runId, step: this.step, epoch: this.epoch, sequence: this.sequence,
      epochEnd, seeds: this.seeds.states(), plateauEpochs: plateau }));
  }

  async train(session, every) {
    while (!this.ended && this.step < this.opts.maxSteps) {
      this.applyDecisions(session);
      if (this.ended) break;
      this.step += every;
      this.seeds.train(every);
      this.send(session, false);
      if (this.step % this.opts.stepsPerEpoch === 0) {
        this.epoch += 1;
        this.send(session, true); // the epoch-end repeat: same step, next sequence
      }
      await sleep(this.opts.paceMs);
      if (session.ended !== null) throw new Error(`session ended: ${session.ended}`);
    }
  }
}

async function main() {
  const opts = options();
  const stub = esper.connect('TamiyoService', opts.address);
  const run = new Run(opts, stub);
  const session = new TamiyoSession(stub, run.openMessage());
  const accept = await session.start();
  await run.train(session, accept.snapshot_every_steps || 10);
  await sleep(opts.paceMs);
  await session.close();

  // The stream is gone (as after a network cut): re-open with what the client knows.
  const again = new TamiyoSession(stub, run.openMessage());
  const resumedAccept = await again.start();
  run.step += accept.snapshot_every_steps || 10;
  run.send(again, false);
  await sleep(opts.paceMs * 5);
  const resentAfterResume = again.takeDecisions().filter((d) => run.acked.includes(d.decision_id)).length;
  await again.close();
  stub.close();

  const summary = {
    run_id: opts.runId, session_id: accept.session_id, contract_version: esper.contractVersion(),
    accept: { snapshot_every_steps: accept.snapshot_every_steps, heartbeat_seconds: accept.heartbeat_seconds,
      idle_timeout_seconds: accept.idle_timeout_seconds, policy_version: accept.policy_version, resumed: accept.resumed },
    steps: run.step, snapshots: run.snapshots, decisions: run.decisions, acks: run.acks, field_reports: run.fieldReports,
    warnings: { ...session.warnings, ...again.warnings }, heartbeats_received: session.heartbeatsReceived,
    seeds: run.seeds.states().filter((s) => s.seed_id).map((s) => ({ slot_id: s.slot_id, seed_id: s.seed_id,
      stage: s.stage, blueprint_ref: s.blueprint_ref })),
    resumed: resumedAccept.resumed, resent_after_resume: resentAfterResume,
  };
  if (opts.json) {
    console.log(JSON.stringify(summary));
    return;
  }
  console.log(`run ${summary.run_id}: ${summary.steps} steps, ${summary.snapshots} snapshots, ` +
    `${summary.decisions.length} decisions (${JSON.stringify(summary.acks)}), ${summary.field_reports} field reports`);
  for (const d of summary.decisions) {
    const what = { advance: d.target_stage, germinate: d.blueprint_ref }[d.action] || '';
    const status = d.status === 'ACK_STATUS_APPLIED' ? '' : ` (${d.status.replace('ACK_STATUS_', '').toLowerCase()})`;
    console.log(`  step ${d.issued_at_step}: ${d.action} ${d.slot_id} ${what}`.trimEnd() + status);
  }
  for (const s of summary.seeds) console.log(`  seed ${s.seed_id} in ${s.slot_id}: ${s.blueprint_ref} ${s.stage}`);
  console.log(`re-opened: resumed=${summary.resumed}, decisions re-sent: ${summary.resent_after_resume}`);
}

main().catch((err) => {
  console.error(`session: ${esper.describeError(err)}`);
  process.exit(err instanceof esper.ConfigError || err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? 2 : 1);
});
