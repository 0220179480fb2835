'use strict';
// The client side of Tamiyo's Session stream, as tamiyo.proto writes the protocol: `open`
// first and wait for `accept`; then snapshots, acks, field reports and heartbeats up,
// decisions, heartbeats and warnings down. This class keeps the stream's rules (first
// message, heartbeat period, silence watchdog); what to do with a decision is the caller's.

const { describeError } = require('./esper');

// A stream with no server message for this many heartbeat periods is treated as down
// (the Python client's SILENCE_HEARTBEATS).
const SILENCE_HEARTBEATS = 3;
// Heartbeat period until the server's accept says otherwise (seconds).
const DEFAULT_HEARTBEAT_S = 5;

class SessionEnded extends Error {}

class TamiyoSession {
  constructor(stub, open) {
    this.stub = stub;
    this.open = open;
    this.accept = null;
    this.decisions = []; // received, not yet taken by the caller
    this.warnings = {}; // code -> count
    this.warningCodes = {}; // code -> SessionWarningCode name
    this.heartbeatsReceived = 0;
    this.ended = null; // why the stream ended, once it has
    this.heartbeatMs = DEFAULT_HEARTBEAT_S * 1000;
    this.sequence = 0;
    this.lastSent = Date.now();
    this.lastHeard = Date.now();
    this.timer = null;
    this.call = null;
  }

  // Opens the stream and resolves with the SessionAccept (rejects with the refusal).
  start(timeoutMs = 20_000) {
    this.call = this.stub.Session();
    return new Promise((resolve, reject) => {
      const deadline = setTimeout(() => {
        reject(new SessionEnded(`no accept within ${timeoutMs} ms`));
        this.cancel();
      }, timeoutMs);
      this.call.on('data', (response) => {
        this.lastHeard = Date.now();
        if (response.message === 'accept' && this.accept === null) {
          clearTimeout(deadline);
          this.accepted(response.accept);
          resolve(response.accept);
        } else {
          this.received(response);
        }
      });
      this.call.on('error', (err) => {
        clearTimeout(deadline);
        this.finish(describeError(err));
        reject(new SessionEnded(this.ended));
      });
      this.call.on('end', () => this.finish('the server ended the session'));
      this.write({ open: this.open });
    });
  }

  accepted(accept) {
    this.accept = accept;
    if (accept.heartbeat_seconds > 0) this.heartbeatMs = accept.heartbeat_seconds * 1000;
    // Check often enough to beat within a period and to notice silence promptly.
    this.timer = setInterval(() => this.tick(), Math.max(50, this.heartbeatMs / 4));
  }

  received(response) {
    switch (response.message) {
      case 'decision':
        this.decisions.push(response.decision);
        break;
      case 'warning': {
        const w = response.warning;
        this.warnings[w.code] = (this.warnings[w.code] || 0) + 1;
        this.warningCodes[w.code] = w.warning_code;
        break;
      }
      case 'heartbeat':
        this.heartbeatsReceived += 1;
        break;
      default:
        break;
    }
  }

  tick() {
    const now = Date.now();
    if (now - this.lastHeard > SILENCE_HEARTBEATS * this.heartbeatMs) {
      this.finish(`Tamiyo silent for ${(SILENCE_HEARTBEATS * this.heartbeatMs) / 1000} s`);
      this.cancel();
      return;
    }
    if (now - this.lastSent >= this.heartbeatMs) {
      this.sequence += 1;
      this.write({ heartbeat: { sequence: this.sequence } });
    }
  }

  write(request) {
    if (this.ended !== null) throw new SessionEnded(this.ended);
    this.lastSent = Date.now();
    this.call.write(request);
  }

  snapshot(snapshot) { this.write({ snapshot }); }

  ack(ack) { this.write({ ack }); }

  fieldReport(report) { this.write({ field_report: report }); }

  // The decisions received since the last call.
  takeDecisions() {
    const out = this.decisions;
    this.decisions = [];
    return out;
  }

  finish(why) {
    if (this.ended === null) this.ended = why;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  cancel() {
    if (this.call !== null) this.call.cancel();
  }

  // Half-closes the stream and waits for the server to end it (or cancels after timeoutMs).
  close(timeoutMs = 5_000) {
    if (this.call === null || this.ended !== null) {
      this.finish('closed');
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timeout); this.finish('closed'); resolve(); };
      const timeout = setTimeout(() => { this.cancel(); done(); }, timeoutMs);
      this.call.on('end', done);
      this.call.on('error', done);
      this.call.end();
    });
  }
}

module.exports = { TamiyoSession, SessionEnded, SILENCE_HEARTBEATS };
