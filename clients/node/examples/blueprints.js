#!/usr/bin/env node
'use strict';
// Lists Urza's blueprint catalogue, every page:
//   node clients/node/examples/blueprints.js [--address HOST:PORT] [--family MLP] [--json]
// The address is --address, else $ESPER_URZA_ADDRESS, else 127.0.0.1:50051. TLS and the
// bearer token come from ESPER_TLS* and ESPER_TOKEN (see lib/esper.js). Exit 1 when Urza
// cannot be reached or refuses, 2 on bad arguments.

const { parseArgs } = require('node:util');
const esper = require('../lib/esper');

async function main() {
  const { values } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.ESPER_URZA_ADDRESS || '127.0.0.1:50051' },
      family: { type: 'string', default: '' },
      json: { type: 'boolean', default: false },
    },
  });
  const urza = esper.connect('UrzaService', values.address);
  const request = { page_size: 100 };
  if (values.family) request.family = `BLUEPRINT_FAMILY_${values.family.toUpperCase()}`;
  const records = [];
  for await (const record of esper.pages(urza, 'ListBlueprints', request, 'blueprints')) records.push(record);
  urza.close();
  if (values.json) {
    console.log(JSON.stringify(records.map((r) => ({
      ref: `${r.spec.name}@${r.spec.version}`, family: r.spec.family, state: r.state,
      params: r.spec.metadata.params_formula, risk: r.spec.metadata.risk_score,
    }))));
    return;
  }
  for (const r of records) {
    console.log(`${r.spec.name}@${r.spec.version}\t${r.spec.family.replace('BLUEPRINT_FAMILY_', '')}\t${r.state.replace('BLUEPRINT_STATE_', '')}`);
  }
  console.log(`${records.length} blueprints`);
}

main().catch((err) => {
  console.error(`blueprints: ${esper.describeError(err)}`);
  process.exit(err instanceof esper.ConfigError || err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? 2 : 1);
});
