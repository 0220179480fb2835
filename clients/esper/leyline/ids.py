"""The id formats of Esper, one definition each: every part that makes an id makes it
here, and every part that checks one checks it against the pattern here. docs/contract.md
writes the same table for clients in other languages (a test keeps the two in step).

| id | made by | format |
|---|---|---|
| run id | the user or Tolaria | RUN_ID_RULE; Tolaria's default "run-" + 12 hex |
| seed id | Kasmina, at germination | "seed-" + 12 hex |
| decision id | the policy (Tamiyo or local) | a random UUID, lower-case hex |
| kernel id | whoever packs a kernel | "k-" + the first 16 hex of the artifact's SHA-256 |
| job id | Tezzeret | "j-" + 32 hex |
| session id | Tamiyo, per Session stream | a random UUID |
| event id | the producer of a TelemetryEvent | a random UUID |

Run ids are log keys, Kafka message keys and Nissa's primary keys, so they are printable
and short; kernel ids are content-derived, so one artifact has one id everywhere."""

from __future__ import annotations

import random
import re
import uuid

# -- run ids: chosen by the user, checked by Tolaria at attach and Tamiyo on open/Decide --

MAX_RUN_ID_LENGTH = 128
# A letter or digit first (never a dash that reads as a flag), then letters, digits and
# . _ : - (fullmatch: a trailing newline is not allowed either).
RUN_ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:\-]{{0,{MAX_RUN_ID_LENGTH - 1}}}")
RUN_ID_RULE = f"1-{MAX_RUN_ID_LENGTH} of A-Z a-z 0-9 . _ : -, starting with a letter or digit"
RUN_ID_PREFIX = "run-"
# Random hex digits of a generated id: 48 bits for runs and seeds (unique among a user's
# runs and a run's seeds, and short enough to read in logs and plots).
SHORT_RANDOM_HEX = 12


def run_id_problem(run_id: str) -> str | None:
    """Why `run_id` is not a valid run id, or None when it is."""
    if isinstance(run_id, str) and RUN_ID_PATTERN.fullmatch(run_id):
        return None
    return f"{str(run_id)[:40]!r} is not a run id ({RUN_ID_RULE})"


def validate_run_id(run_id: str) -> str:
    """`run_id` itself when valid; ValueError saying why otherwise."""
    problem = run_id_problem(run_id)
    if problem is not None:
        raise ValueError(problem)
    return run_id


def new_run_id() -> str:
    return RUN_ID_PREFIX + uuid.uuid4().hex[:SHORT_RANDOM_HEX]


# -- seed ids: one per germination, made by Kasmina --------------------------------------

SEED_ID_PREFIX = "seed-"
SEED_ID_PATTERN = re.compile(rf"{SEED_ID_PREFIX}[0-9a-f]{{{SHORT_RANDOM_HEX}}}")


def new_seed_id() -> str:
    return SEED_ID_PREFIX + uuid.uuid4().hex[:SHORT_RANDOM_HEX]


# -- random UUIDs: decision, session and event ids -----------------------------------------

UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


# RFC 4122 variant nibbles (10xx) of a random UUID, indexed by two random bits.
_UUID_VARIANT_NIBBLES = "89ab"


def random_uuid() -> str:
    """A random (version 4) UUID string, as str(uuid.uuid4()) gives, at under half its
    cost (no UUID object, no os.urandom: ids are made on the training thread at every
    decision and event, and os.urandom releases the GIL, handing it to a producer's sender
    thread for up to a switch interval). `random` is seeded from os.urandom and reseeded in
    forked children, so ids of different processes collide no more than uuid4's; they are
    not secrets."""
    h = f"{random.getrandbits(128):032x}"
    variant = _UUID_VARIANT_NIBBLES[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def new_decision_id() -> str:
    return random_uuid()


def new_session_id() -> str:
    return random_uuid()


def new_event_id() -> str:
    return random_uuid()


# -- kernel ids: content-derived -------------------------------------------------------------

KERNEL_ID_PREFIX = "k-"
# Length of the digest prefix in a kernel id: 64 bits, collision-free at catalogue scale.
KERNEL_ID_DIGEST_CHARS = 16
KERNEL_ID_PATTERN = re.compile(rf"{KERNEL_ID_PREFIX}[0-9a-f]{{{KERNEL_ID_DIGEST_CHARS}}}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def kernel_id_for(digest: str) -> str:
    """The kernel id of an artifact whose SHA-256 is `digest` (64 lower-case hex digits)."""
    if not isinstance(digest, str) or not SHA256_PATTERN.fullmatch(digest):
        raise ValueError(f"{str(digest)[:80]!r} is not a SHA-256 hex digest (64 lower-case hex digits)")
    return KERNEL_ID_PREFIX + digest[:KERNEL_ID_DIGEST_CHARS]


# -- compile job ids: made by Tezzeret ---------------------------------------------------------

JOB_ID_PREFIX = "j-"
JOB_ID_PATTERN = re.compile(rf"{JOB_ID_PREFIX}[0-9a-f]{{32}}")


def new_job_id() -> str:
    return JOB_ID_PREFIX + uuid.uuid4().hex
