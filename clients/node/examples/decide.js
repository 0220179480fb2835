#!/usr/bin/env node
'use strict';
// One decision from Tamiyo's unary Decide for a simulated run whose loss has plateaued:
//   node clients/node/examples/decide.js [--address HOST:PORT] [--run-id ID] [--json]
// The address is --address, else $ESPER_TAMIYO_ADDRESS, else 127.0.0.1:50053; TLS and the
// token from ESPER_TLS* and ESPER_TOKEN. Prints the decision (a wait, with its rationale,
// when nothing should be done). Exit 1 when Tamiyo cannot be reached or refuses.

const { parseArgs } = require('node:util');
const esper = require('../lib/esper');
const { modelGraph, snapshot, SimulatedSeeds } = require('../lib/model');

async function main() {
  const { values } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.ESPER_TAMIYO_ADDRESS || '127.0.0.1:50053' },
      'run-id': { type: 'string', default: `run-node-decide-${process.pid}` },
      layers: { type: 'string', default: '4' },
      width: { type: 'string', default: '16' },
      policy: { type: 'string', default: '' },
      json: { type: 'boolean', default: false },
    },
  });
  const graph = modelGraph(Number(values.layers), Number(values.width));
  const seeds = new SimulatedSeeds(graph);
  const tamiyo = esper.connect('TamiyoService', values.address);
  const { decision } = await esper.unary(tamiyo, 'Decide', {
    snapshot: snapshot({ runId: values['run-id'], step: 100, epoch: 10, sequence: 1, epochEnd: true,
      seeds: seeds.states(), plateauEpochs: 10 }),
    graph, capabilities: { device: 'cpu', dtype: 'DTYPE_FLOAT32', max_live_seeds: 1 }, policy: values.policy,
  });
  tamiyo.close();
  if (values.json) {
    console.log(JSON.stringify(decision));
    return;
  }
  const action = decision[decision.action];
  console.log(`${decision.action} ${action.slot_id || ''} ${action.blueprint_ref || ''}`.trim());
  console.log(`  decision ${decision.decision_id}, expires at step ${decision.expires_at_step}, ${decision.policy_version}`);
  console.log(`  ${decision.rationale}`);
}

main().catch((err) => {
  console.error(`decide: ${esper.describeError(err)}`);
  process.exit(err instanceof esper.ConfigError || err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? 2 : 1);
});
