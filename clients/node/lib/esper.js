'use strict';
// Esper's contract and channels for Node.js, from the repository's proto files only.
//
// The settings mirror the Python client layer (clients/esper/rpc/channels.py), so one
// environment configures every client of a deployment:
//   ESPER_TLS=true                 TLS (server verified against ESPER_TLS_CA or the system roots)
//   ESPER_TLS_CA                   PEM file of the CA that signs the servers' certificates
//   ESPER_TLS_CERT, ESPER_TLS_KEY  a client certificate and its key (mutual TLS)
//   ESPER_TLS_SERVER_NAME          the name to check in the server's certificate
//   ESPER_TOKEN or ESPER_TOKEN_FILE  a bearer token sent as `authorization: Bearer <token>`
// Like the Python layer, a token is only sent in the clear to a loopback address.

const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The import root of the contract: proto/ at the repository's top (ESPER_PROTO_DIR overrides).
const PROTO_DIR = process.env.ESPER_PROTO_DIR || path.resolve(__dirname, '..', '..', '..', 'proto');
const SERVICE_FILES = [
  'esper/leyline/v1/tamiyo.proto',
  'esper/leyline/v1/urza.proto',
];
// Field names as the proto files spell them; uint64 steps fit a Number (< 2^53); enums by
// name; unset fields present with their defaults; the set member of each oneof named.
const LOAD_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };
// The message limit of every Esper channel and server (esper.rpc.channels.MAX_MESSAGE_BYTES).
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
// Keepalive ping period: servers refuse pings more frequent than every 5 minutes by default.
const KEEPALIVE_MS = 300_000;
const KEEPALIVE_TIMEOUT_MS = 20_000;
const TRUE_WORDS = new Set(['1', 'true', 'yes', 'on']);

class ConfigError extends Error {}

let loaded = null;

function contract() {
  if (loaded === null) {
    const definition = protoLoader.loadSync(SERVICE_FILES, { ...LOAD_OPTIONS, includeDirs: [PROTO_DIR] });
    loaded = { definition, v1: grpc.loadPackageDefinition(definition).esper.leyline.v1 };
  }
  return loaded;
}

// The version to send in SessionOpen: the highest ContractVersion value, decoded
// (major * 10000 + minor * 100 + patch; see common.proto).
function contractVersion() {
  const values = contract().definition['esper.leyline.v1.ContractVersion'].type.value;
  const n = Math.max(...values.map((v) => v.number));
  return { major: Math.floor(n / 10000), minor: Math.floor(n / 100) % 100, patch: n % 100 };
}

function securityFromEnv(env = process.env) {
  let token = env.ESPER_TOKEN || null;
  if (!token && env.ESPER_TOKEN_FILE) {
    token = readFile(env.ESPER_TOKEN_FILE, 'ESPER_TOKEN_FILE').toString('utf8').trim() || null;
  }
  return {
    tls: TRUE_WORDS.has((env.ESPER_TLS || '').trim().toLowerCase()),
    caFile: env.ESPER_TLS_CA || null,
    certFile: env.ESPER_TLS_CERT || null,
    keyFile: env.ESPER_TLS_KEY || null,
    serverName: env.ESPER_TLS_SERVER_NAME || null,
    token,
  };
}

function isLoopback(address) {
  const host = address.slice(0, address.lastIndexOf(':')).replace(/^\[|\]$/g, '');
  if (host === 'localhost') return true;
  if (net.isIPv4(host)) return host.startsWith('127.');
  return host === '::1';
}

// Refuse settings that cannot work, or would send a secret in the clear (as ChannelSecurity.check).
function checkSecurity(security, address) {
  if (!address || !address.includes(':')) throw new ConfigError(`address must be HOST:PORT, got ${JSON.stringify(address)}`);
  if ((security.certFile === null) !== (security.keyFile === null)) {
    throw new ConfigError('a client certificate needs both ESPER_TLS_CERT and ESPER_TLS_KEY');
  }
  if (!security.tls && (security.caFile || security.certFile || security.serverName)) {
    throw new ConfigError('ESPER_TLS_CA, ESPER_TLS_CERT and ESPER_TLS_SERVER_NAME need ESPER_TLS=true');
  }
  if (security.token && !security.tls && !isLoopback(address)) {
    throw new ConfigError(`a bearer token would travel in the clear to ${address}: set ESPER_TLS=true ` +
      '(plaintext tokens are only sent to loopback addresses)');
  }
  if (security.token && /[\r\n\0]/.test(security.token)) throw new ConfigError('token holds a line break or NUL');
}

function readFile(file, what) {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new ConfigError(`${what}: cannot read ${file}: ${err.code || err.message}`);
  }
}

function channelCredentials(security) {
  if (!security.tls) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(
    security.caFile ? readFile(security.caFile, 'ESPER_TLS_CA') : null,
    security.keyFile ? readFile(security.keyFile, 'ESPER_TLS_KEY') : null,
    security.certFile ? readFile(security.certFile, 'ESPER_TLS_CERT') : null,
  );
}

// Adds the bearer token to every call. An interceptor rather than call credentials:
// grpc-js only combines call credentials with TLS, and loopback plaintext may carry a token.
function tokenInterceptor(token) {
  return (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set('authorization', `Bearer ${token}`);
      next(metadata, listener);
    },
  });
}

function clientOptions(security) {
  const options = {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    'grpc.keepalive_time_ms': KEEPALIVE_MS,
    'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
  };
  if (security.serverName) options['grpc.ssl_target_name_override'] = security.serverName;
  if (security.token) options.interceptors = [tokenInterceptor(security.token)];
  return options;
}

// A stub of one Esper service ("TamiyoService", "UrzaService") at HOST:PORT.
function connect(serviceName, address, security = securityFromEnv()) {
  checkSecurity(security, address);
  const Service = contract().v1[serviceName];
  if (!Service) throw new ConfigError(`no service ${serviceName} in the contract`);
  return new Service(address, channelCredentials(security), clientOptions(security));
}

// A unary call as a promise, with a deadline.
function unary(stub, method, request, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    stub[method](request, { deadline: new Date(Date.now() + timeoutMs) }, (err, response) => {
      if (err) reject(err);
      else resolve(response);
    });
  });
}

// Every item of a List RPC, page by page (`field` names the repeated field of a response).
async function* pages(stub, method, request, field, timeoutMs = 10_000) {
  let pageToken = '';
  do {
    const response = await unary(stub, method, { ...request, page_token: pageToken }, timeoutMs);
    yield* response[field];
    pageToken = response.next_page_token;
  } while (pageToken);
}

// "UNAVAILABLE: details" for a failed call, as the Python client layer words a ServiceError.
function describeError(err) {
  if (err && typeof err.code === 'number') {
    const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || String(err.code);
    return `${name}: ${err.details || err.message}`;
  }
  return err && err.message ? err.message : String(err);
}

module.exports = {
  ConfigError, PROTO_DIR, MAX_MESSAGE_BYTES, contract, contractVersion, securityFromEnv, checkSecurity,
  isLoopback, connect, unary, pages, describeError, grpc,
};
