"""The local Apache Kafka broker: fetched by Maven, formatted once, started with ``java``.

No Docker engine runs on the development machines, so the real broker (KRaft mode, single
node) runs from the jars that ``infra/kafka/pom.xml`` pulls from Maven Central. Its data lives
under ``$QUEUEWATCH_HOME/kafka`` and survives restarts: the log is the system of record, so the
storage is formatted only when it was never formatted before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from pydantic import SecretStr

from queuewatch.errors import ConfigurationError, QueuewatchError
from queuewatch.kafka.security import KafkaSecurity
from queuewatch.platform.processes import cmdline, die_with_parent_hook, pid_alive, wait_gone
from queuewatch.resources import kafka_infra_dir

log = logging.getLogger(__name__)

MIN_JAVA = 17

#: Appended to the template for the local broker only. A restarted single node may register
#: only once the session of its previous incarnation has expired (the controller answers
#: DUPLICATE_BROKER_REGISTRATION until then): 9 s by default, which made a restart on existing
#: data take ~14 s against ~8 s for a fresh folder (measured). A 4 s session still tolerates
#: GC or CPU stalls several times longer than a heartbeat interval.
LOCAL_RESTART_TUNING = {
    "broker.session.timeout.ms": "4000",
    "broker.heartbeat.interval.ms": "1000",
}


class BrokerError(QueuewatchError):
    """The local broker could not be fetched, started or reached."""


class PortTakenError(BrokerError):
    """A port the broker needs is held by another program (one that is not Kafka)."""


class StartCancelled(BrokerError):
    """The broker's start was abandoned because a stop was requested meanwhile."""


def split_host_port(address: str, default_port: int = 9092) -> tuple[str, int]:
    """``host:port`` of the first bootstrap server."""
    first = address.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host:
        return first, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"cannot read a port in the Kafka bootstrap address {address!r}; "
            "set QUEUEWATCH_KAFKA_BOOTSTRAP to host:port, e.g. 127.0.0.1:9092"
        )
    return host.strip("[]"), int(port)


def is_local_address(host: str) -> bool:
    """True when ``host`` names this machine, so a broker may be started for it."""
    if host in {"localhost", "127.0.0.1", "::1", "0.0.0.0"} or host.startswith("127."):
        return True
    try:
        return socket.gethostbyname(host).startswith("127.")
    except OSError:
        return False


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet_kafka_client_logs() -> Iterator[None]:
    """Silence kafka-python while probing: a refused connection is an answer here, not news,
    and its retry chatter would bury the one-line error the person needs."""
    client_log = logging.getLogger("kafka")
    previous = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client_log.setLevel(previous)


def kafka_answers(
    bootstrap: str, timeout_s: float = 5.0, security: KafkaSecurity | None = None
) -> bool:
    """True when a Kafka broker answers a metadata request at ``bootstrap``.

    ``security`` is how to talk to it: a secured broker does not answer a PLAINTEXT probe.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    with quiet_kafka_client_logs():
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                request_timeout_ms=int(timeout_s * 1000),
                # Without it a silent port holds the probe for the client's 30 s default.
                bootstrap_timeout_ms=int(timeout_s * 1000),
                client_id="queuewatch-probe",
                **(security or KafkaSecurity()).kafka_python(),
            )
        except (KafkaError, OSError):
            return False
        try:
            admin.describe_cluster()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()


def java_version(java: str = "java") -> int:
    """The major version of the ``java`` on PATH, or an error saying how to install one."""
    exe = shutil.which(java)
    if exe is None:
        raise ConfigurationError(
            "java was not found on PATH; install a Java 17+ runtime "
            "(Debian: apt-get install openjdk-17-jre-headless) or point "
            "QUEUEWATCH_KAFKA_BOOTSTRAP at a running broker"
        )
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise ConfigurationError(f"cannot read the Java version from: {out.stderr.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise ConfigurationError(
            f"Kafka 4 needs Java {MIN_JAVA}+, found Java {major}; install a newer JDK or JRE"
        )
    return major


def fetch_jars(libs_dir: Path, pom: Path | None = None) -> Path:
    """Download the broker's jars with Maven into ``libs_dir`` unless they are there already."""
    if any(libs_dir.glob("kafka_2.13-*.jar")):
        return libs_dir
    pom = pom or kafka_infra_dir() / "pom.xml"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigurationError(
            "mvn (Apache Maven) was not found on PATH; it fetches the Kafka broker's jars. "
            "Install it (Debian: apt-get install maven) and run `make broker` again"
        )
    log.info("fetching the Kafka broker jars with Maven into %s", libs_dir)
    cmd = [mvn, "-q", "-B", "-f", str(pom), "package", f"-Dlibs.dir={libs_dir.resolve()}"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not any(libs_dir.glob("kafka_2.13-*.jar")):
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise BrokerError(f"Maven could not fetch the broker's jars ({' '.join(cmd)}):\n{tail}")
    return libs_dir


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for tests and the controller listener)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class BrokerSecurity:
    """A SASL_SSL broker: its TLS files and the users it knows.

    Every listener speaks SASL_SSL, the controller's included (a PLAINTEXT controller port
    would take requests from anyone on the machine). Clients authenticate with
    SCRAM-SHA-512 (credentials written into the storage when it is formatted, so they hold
    from the first start) or PLAIN (from the listener's JAAS config); the broker talks to its
    own controller and to itself as ``broker_user`` with PLAIN. The PEM files are Kafka 4's
    ``ssl.keystore.type=PEM``: ``keystore`` holds the unencrypted PKCS#8 key and the
    certificate chain, ``truststore`` the CA.
    """

    keystore: Path
    truststore: Path
    users: dict[str, str]
    broker_user: str = "broker"
    broker_password: str = field(default_factory=lambda: uuid.uuid4().hex)

    def client(self, username: str, mechanism: str = "SCRAM-SHA-512") -> KafkaSecurity:
        """How a client logs in as ``username`` (one of ``users``)."""
        return KafkaSecurity(
            protocol="SASL_SSL",
            mechanism=mechanism,  # type: ignore[arg-type]
            username=username,
            password=SecretStr(self.users[username]),
            cafile=self.truststore,
        )

    def properties(self) -> dict[str, str]:
        """The broker properties that secure it (passwords included: the file is 0600)."""
        plain_users = {self.broker_user: self.broker_password, **self.users}
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{self.broker_user}" password="{self.broker_password}" '
            + " ".join(f'user_{name}="{password}"' for name, password in plain_users.items())
            + ";"
        )
        return {
            "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": plain,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore.resolve()),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.truststore.resolve()),
            "ssl.client.auth": "none",
        }

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create each user's SCRAM-SHA-512 secret."""
        out = []
        for name, password in self.users.items():
            out += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        return out


#: The listener lines of the template a secured broker replaces.
_SECURED_LISTENERS = {
    "listeners": "SASL_SSL://{host}:{port},CONTROLLER://{host}:{controller_port}",
    "advertised.listeners": "SASL_SSL://{host}:{port}",
    "inter.broker.listener.name": "SASL_SSL",
    "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL",
}


@dataclass
class LocalBroker:
    """One KRaft broker+controller process with its data under ``data_root``.

    With ``security`` it listens SASL_SSL only (see :class:`BrokerSecurity`).
    """

    data_root: Path
    libs_dir: Path
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int | None = None
    heap: str = "1g"
    process: subprocess.Popen[bytes] | None = None
    security: BrokerSecurity | None = None

    @property
    def client_security(self) -> KafkaSecurity:
        """How queuewatch's own probes reach this broker: as the broker's user when secured."""
        if self.security is None:
            return KafkaSecurity()
        s = self.security
        return KafkaSecurity(
            protocol="SASL_SSL",
            mechanism="PLAIN",
            username=s.broker_user,
            password=SecretStr(s.broker_password),
            cafile=s.truststore,
        )

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients use."""
        return f"{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        """Where the broker writes its log."""
        return self.data_root / "broker.log"

    @property
    def pid_file(self) -> Path:
        """Pid of the running broker, so a crashed supervisor's broker can be found."""
        return self.data_root / "broker.pid"

    def _config(self) -> Path:
        """Write server.properties from the template for this broker's ports and folder."""
        controller_port = self.effective_controller_port
        template = Template((kafka_infra_dir() / "server.properties.template").read_text())
        text = template.substitute(
            host=self.host,
            port=self.port,
            controller_port=controller_port,
            log_dir=(self.data_root / "data").resolve(),
        )
        local = "".join(f"{key}={value}\n" for key, value in LOCAL_RESTART_TUNING.items())
        text = f"{text}\n# Local platform only (see LOCAL_RESTART_TUNING in broker.py)\n{local}"
        if self.security is not None:
            text = _secured(text, self.host, self.port, controller_port, self.security)
        path = self.data_root / "server.properties"
        # Owner only: a secured broker's file holds its users' passwords.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o600)
        return path

    def _classpath(self) -> str:
        jars = sorted(self.libs_dir.glob("*.jar"))
        if not jars:
            raise BrokerError(
                f"no broker jars in {self.libs_dir}; run `make broker` (Maven fetches them)"
            )
        return os.pathsep.join(str(j) for j in jars)

    def _java(self, *args: str, heap: str = "256m") -> list[str]:
        log4j = kafka_infra_dir() / "log4j2.yaml"
        return [
            "java",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dqueuewatch.broker.log={self.log_file}",
            "-cp",
            self._classpath(),
            *args,
        ]

    def prepare(self) -> Path:
        """Create the folder, write the config, and format the storage the first time only."""
        try:
            self.data_root.mkdir(parents=True, exist_ok=True)
            probe = self.data_root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write to {self.data_root} ({exc.strerror}); set QUEUEWATCH_HOME to a "
                "folder you can write"
            ) from exc
        java_version()
        config = self._config()
        if (self.data_root / "data" / "meta.properties").exists():
            return config  # formatted before: keep the log, it is the system of record
        cluster_id = _random_cluster_id()
        cmd = self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config))
        if self.security is not None:
            cmd += self.security.scram_arguments()
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerError(
                f"formatting the broker storage failed: {result.stdout}{result.stderr}"
            )
        return config

    @property
    def effective_controller_port(self) -> int:
        """The KRaft controller port: the configured one, else the Kafka port + 1."""
        return self.controller_port or self.port + 1

    def check_ports(self, kafka_checked: bool = False) -> None:
        """Fail with a clear message when the Kafka or controller port is already taken.

        ``kafka_checked`` skips the (slow) Kafka probe when the caller already knows that
        whatever listens there is not Kafka.
        """
        if port_open(self.host, self.port):
            if not kafka_checked and kafka_answers(self.bootstrap, 3.0, self.client_security):
                raise PortTakenError(
                    f"a Kafka broker already answers at {self.bootstrap}; use it (queuewatch up "
                    "does so by itself) or set QUEUEWATCH_KAFKA_BOOTSTRAP to another port"
                )
            raise PortTakenError(
                f"port {self.port} on {self.host} is taken by a program that is not Kafka; "
                "stop it or set QUEUEWATCH_KAFKA_BOOTSTRAP to a free port "
                f"(e.g. {self.host}:{free_port(self.host)})"
            )
        controller = self.effective_controller_port
        if port_open(self.host, controller):
            raise PortTakenError(
                f"the broker's controller port {controller} on {self.host} is taken by another "
                "program; stop it or set QUEUEWATCH_KAFKA_CONTROLLER_PORT to a free port"
            )

    def stop_stale(self, timeout_s: float = 30.0) -> int | None:
        """Stop a broker that an earlier, killed run left behind on this data folder.

        Only a process whose command line names this folder's config is touched, so a pid
        recycled by an unrelated program is never signalled. Returns the stopped pid.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        config = str(self.data_root / "server.properties")
        args = cmdline(pid)
        if not pid_alive(pid) or "kafka.Kafka" not in args or config not in args:
            self.pid_file.unlink(missing_ok=True)
            return None
        log.warning("stopping the broker (pid %d) that an earlier run left running", pid)
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, timeout_s):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        return pid

    def start(
        self,
        timeout_s: float = 60.0,
        cancelled: Callable[[], bool] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        """Start the broker and wait until it answers metadata requests.

        ``cancelled`` is polled while waiting, so a Ctrl-C during a slow start stops the
        half-started broker instead of leaving it behind. With ``die_with_parent`` the
        kernel stops the broker should this process be killed outright.
        """
        self.stop_stale()
        self.check_ports()
        config = self.prepare()
        cmd = self._java("kafka.Kafka", str(config), heap=self.heap)
        out = open(self.data_root / "broker.stdout", "ab")  # noqa: SIM115 - owned by the child
        # A session of its own: Ctrl-C in the terminal reaches the supervisor, which then
        # stops the broker last, after the processors that still need it.
        self.process = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent_hook() if die_with_parent else None,
        )
        out.close()
        self.pid_file.write_text(str(self.process.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                self.process = None
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"the broker exited with status {status} while starting; "
                    f"read {self.log_file} and {self.data_root / 'broker.stdout'}"
                )
            if cancelled is not None and cancelled():
                self.stop()
                raise StartCancelled("stop requested while the broker was starting")
            if port_open(self.host, self.port) and kafka_answers(
                self.bootstrap, 2.0, self.client_security
            ):
                log.info("Kafka broker answers at %s (pid %d)", self.bootstrap, self.process.pid)
                return
            time.sleep(0.3)
        self.stop()
        raise BrokerError(
            f"the broker did not answer within {timeout_s:.0f} s; read {self.log_file} "
            "(a slow machine may need QUEUEWATCH_BROKER_START_TIMEOUT_S raised)"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after ``timeout_s``)."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("the broker did not stop within %.0f s; killing it", timeout_s)
                proc.kill()
                proc.wait()
        self.process = None
        self.pid_file.unlink(missing_ok=True)


def _secured(
    text: str, host: str, port: int, controller_port: int, security: BrokerSecurity
) -> str:
    """The template's properties with SASL_SSL listeners and the security properties."""
    replaced = {
        key: value.format(host=host, port=port, controller_port=controller_port)
        for key, value in _SECURED_LISTENERS.items()
    }
    lines = [line for line in text.splitlines() if line.partition("=")[0].strip() not in replaced]
    extra = {**replaced, **security.properties()}
    return (
        "\n".join(lines)
        + "\n# SASL_SSL (BrokerSecurity in broker.py)\n"
        + "".join(f"{key}={value}\n" for key, value in extra.items())
    )


def _random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Never one that starts with ``-``: the storage tool's argument parser would read it as an
    option and refuse to format (one id in 64 would; Kafka's own generator avoids it too).
    """
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
