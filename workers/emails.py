"""An example worker: signup emails, "sent" a batch at a time (the docker compose system).

Run it with the worker command (which imports only this module)::

    pgbatch worker workers.emails:app --processes 2

and feed it with ``python -m workers.producer``. Each batch is validated against
SignupEmail; an address at ``bounce.example`` fails (and, after its attempts, lands in the
dead letters, visible with ``pgbatch stats`` and ``pgbatch dead list emails``); every other
message is archived with a result.
"""

from __future__ import annotations

import logging
import os
import time

import pydantic

import pgbatch

log = logging.getLogger("workers.emails")

QUEUE = "emails"
BOUNCING_DOMAIN = "bounce.example"
# Pretend each email costs this long to hand to an SMTP relay: the batch pays it once.
RELAY_SECONDS = float(os.environ.get("EMAILS_RELAY_SECONDS", "0.02"))


class SignupEmail(pydantic.BaseModel):
    to: str
    user_id: int


# No DSN here: the worker command's --dsn, else $PGBATCH_DSN / $DATABASE_URL, else the
# embedded server. The schema can be moved with $PGBATCH_SCHEMA (this example's convention).
SCHEMA = os.environ.get("PGBATCH_SCHEMA", "pgbatch")
app = pgbatch.App(schema=SCHEMA)


@app.batch_handler(QUEUE, batch_size=100, lease_seconds=30, model=SignupEmail, max_attempts=3)
def send_signup_emails(batch: pgbatch.Batch[SignupEmail]) -> None:
    """One relay session for the whole batch; a bounced address fails alone."""
    time.sleep(RELAY_SECONDS)
    sent = 0
    for msg in batch:
        if msg.payload.to.endswith("@" + BOUNCING_DOMAIN):
            batch.fail(msg, f"mailbox unavailable: {msg.payload.to}")
        else:
            batch.complete(msg, {"sent": True})
            sent += 1
    log.debug("sent %d of %d emails", sent, len(batch))
