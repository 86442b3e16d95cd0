"""Smoke check of the secured listeners of scripts/kafka.sh with confluent-kafka (librdkafka).

Good clients must produce+consume (PLAINTEXT, SSL, SASL_SSL with SCRAM-SHA-256/512 and PLAIN,
MTLS; a transactional producer over SASL_SSL); bad clients must be rejected for the right reason.
Run with the broker up, e.g.:
  set -a; source .cache/kafka/current.env; set +a
  "$(bash scripts/interop-venv.sh)" scripts/kafka-tls-check.py
"""
import os, re, sys, time, uuid
from confluent_kafka import Consumer, KafkaException, Producer

E = os.environ
TLS = E["TOUCHSTREAM_TEST_TLS_DIR"]
QUIET = {"log_level": 0}  # errors are reported below, not by librdkafka's logger
failed = []


def cert(name):
    return {"ssl.certificate.location": f"{TLS}/{name}.pem", "ssl.key.location": f"{TLS}/{name}.key"}


def ssl(addr_var, ca="ca", **extra):
    return {"bootstrap.servers": E[addr_var], "security.protocol": "SSL",
            "ssl.ca.location": f"{TLS}/{ca}.pem", **extra}


def sasl(mechanism, user, password):
    return {**ssl("TOUCHSTREAM_TEST_BROKERS_SASL_SSL"), "security.protocol": "SASL_SSL",
            "sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password}


def check(name, fn, conf):
    t0 = time.monotonic()
    try:
        what = fn({**QUIET, **conf})
        print(f"ok    {name}: {what} ({time.monotonic() - t0:.1f}s)")
    except Exception as e:
        print(f"FAIL  {name}: {e}")
        failed.append(name)


def consume(conf, topic, **extra):
    """Values of `topic` from the start: until one arrives, then 1 s more."""
    c = Consumer({**conf, "group.id": f"g-{topic}", "auto.offset.reset": "earliest", **extra})
    c.subscribe([topic])
    vals, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            raise KafkaException(m.error())
        vals.append(m.value())
        deadline = min(deadline, time.monotonic() + 1)
    c.close()
    return vals


def roundtrip(conf):
    topic, value = f"tls-check-{uuid.uuid4().hex[:8]}", uuid.uuid4().bytes
    p = Producer(conf)
    p.produce(topic, value)
    if p.flush(30):
        raise RuntimeError("message not delivered in 30 s")
    if (got := consume(conf, topic)) != [value]:
        raise RuntimeError(f"consumed {got}")
    return "produced + consumed"


def transactions(conf):
    topic = f"tls-check-tx-{uuid.uuid4().hex[:8]}"
    p = Producer({**conf, "transactional.id": topic})
    p.init_transactions(30)
    for value, commit in ((b"committed", True), (b"aborted", False)):
        p.begin_transaction()
        p.produce(topic, value)
        p.commit_transaction(30) if commit else p.abort_transaction(30)
    if (got := consume(conf, topic, **{"isolation.level": "read_committed"})) != [b"committed"]:
        raise RuntimeError(f"read_committed consumer saw {got}")
    return "init_transactions + commit + abort, read_committed sees the commit only"


def rejected(pattern):
    """A check that the client is refused with an error matching `pattern`."""
    def fn(conf):
        errors = []
        p = Producer({**conf, "error_cb": lambda e: errors.append(e.str())})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            p.poll(0.2)
            if hit := next((e for e in errors if re.search(pattern, e)), None):
                return f"rejected: ...{hit[-110:]}"
        if p.list_topics(timeout=1):  # raises if there is no connection
            raise RuntimeError(f"connected anyway (errors: {errors})")
    return fn


scram = ("SCRAM-SHA-256", E["TOUCHSTREAM_TEST_SCRAM_USER"], E["TOUCHSTREAM_TEST_SCRAM_PASSWORD"])
scram512 = ("SCRAM-SHA-512", E["TOUCHSTREAM_TEST_SCRAM512_USER"], E["TOUCHSTREAM_TEST_SCRAM512_PASSWORD"])
plain = ("PLAIN", E["TOUCHSTREAM_TEST_PLAIN_USER"], E["TOUCHSTREAM_TEST_PLAIN_PASSWORD"])
MTLS = "TOUCHSTREAM_TEST_BROKERS_MTLS"
bad_credentials = r"SASL authentication error: Authentication failed.*(invalid credentials|Invalid username or password)"
untrusted_server = "SSL handshake failed: .*certificate verify failed"
refused_client = r"alert (bad certificate|certificate required|certificate unknown|unknown ca)"

check("PLAINTEXT", roundtrip, {"bootstrap.servers": E["TOUCHSTREAM_TEST_BROKERS"]})
check("SSL", roundtrip, ssl("TOUCHSTREAM_TEST_BROKERS_SSL"))
check("SASL_SSL SCRAM-SHA-256", roundtrip, sasl(*scram))
check("SASL_SSL SCRAM-SHA-512", roundtrip, sasl(*scram512))
check("SASL_SSL PLAIN", roundtrip, sasl(*plain))
check("MTLS with client.pem", roundtrip, ssl(MTLS, **cert("client")))
check("SASL_SSL SCRAM-SHA-256 transactions", transactions, sasl(*scram))
check("SCRAM-SHA-256 wrong password", rejected(bad_credentials), sasl(*scram[:2], "wrong"))
check("SCRAM-SHA-512 wrong password", rejected(bad_credentials), sasl(*scram512[:2], "wrong"))
check("SCRAM-SHA-512 with the SHA-256 user", rejected(bad_credentials), sasl("SCRAM-SHA-512", *scram[1:]))
check("PLAIN wrong password", rejected(bad_credentials), sasl(*plain[:2], "wrong"))
check("SSL trusting only other-ca.pem", rejected(untrusted_server), ssl("TOUCHSTREAM_TEST_BROKERS_SSL", ca="other-ca"))
check("MTLS without a client certificate", rejected(refused_client), ssl(MTLS))
check("MTLS with other-client.pem", rejected(refused_client), ssl(MTLS, **cert("other-client")))
check("SSL listener with a PLAINTEXT client", rejected("SSL listener"), {"bootstrap.servers": E["TOUCHSTREAM_TEST_BROKERS_SSL"]})
print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
sys.exit(1 if failed else 0)
