"""Cairn's container cluster: its layout (names, networks, addresses), bringing it up and down,
and the faults the nemesis puts on it. `cluster` and `nemesis` share it.

Layout. Node K is the container `cairn-nodeK`, with its data on the volume `cairn-nodeK-data`.
Each node has a *home network* `cairn-TAG-netK` (TAG is random per cluster; subnet PREFIX.K.0/24,
PREFIX the first of 10.213, 10.214, ... free in Docker) where it is reached at PREFIX.K.10 — the
address it advertises, its seeds use, and the host dials. Every node is also attached to every
other node's home network (node J at PREFIX.K.(10+J)), so node J talks to node K over node K's
home network. The networks are `internal` (no gateway route), so a node detached from node K's
home network has no path to node K at all. Cutting the link J-K detaches J from K's home network
and K from J's; any partition shape (isolating one node, majority/minority, a bridge node that
sees both sides) is a set of cut links. The host sits on every bridge, so it reaches every node
whatever is cut. Only these networks are ever touched.

The host-side cluster directory is the one `cairn dev` writes and the CLI reads
(`cli/src/cluster.rs`): DIR/ca.pem, DIR/client/client.{pem,key} (an admin identity, also as
DIR/admin/admin.{pem,key}), DIR/nodeK/node.toml whose
`listen` is the address the host dials. The container's own config (wildcard listen, advertised
home address, absolute paths inside the container) is DIR/docker/nodeK.toml.
"""

import json
import os
import re
import ipaddress
import secrets
import shutil
import subprocess
import time
from pathlib import Path

IMAGE_DEFAULT = "cairn:dev"
PROJECT = "cairn"
PORT = 7000
# The numeric user the image runs the node as (deploy/docker/build-image).
NODE_UID = 10001
NODES_DEFAULT = 5
NODES_MAX = 9
# The first two octets of the home networks: the first of these whose /24s overlap no existing
# Docker network, unless CAIRN_DOCKER_SUBNET_PREFIX names one.
SUBNET_PREFIXES = [f"10.{b}" for b in range(213, 233)]
# Anti-entropy rounds in the container cluster: more often than the default 30 s, so a healed
# cluster converges within the nemesis' bound.
AE_INTERVAL_MS = 5000
# How long `up` waits for every node to see every other one up.
READY_TIMEOUT_S = 120
# Longest a single docker or cairn command may run before it is treated as hung.
COMMAND_TIMEOUT_S = 60
MARKER = "docker/cluster.json"
# How long `down` retries removing what Docker is still releasing.
DOWN_TIMEOUT_S = 20


class ClusterError(Exception):
    """A cluster operation that failed, with what to do about it."""


def node_name(k):
    return f"node{k}"


def container(k):
    return f"cairn-node{k}"


def volume(k):
    return f"cairn-node{k}-data"


def run(args, check=True, timeout=COMMAND_TIMEOUT_S, capture=True):
    """Runs a command; returns the CompletedProcess. A failure (when `check`) raises ClusterError
    naming the command and its stderr."""
    try:
        p = subprocess.run(args, capture_output=capture, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`{' '.join(args)}` did not finish within {timeout} s")
    if check and p.returncode != 0:
        err = (p.stderr or "").strip() if capture else ""
        raise ClusterError(f"`{' '.join(args)}` failed ({p.returncode}): {err}")
    return p


def cairn_binary():
    """The `cairn` the host uses: $CAIRN_BIN, else the workspace's debug or release build, else
    PATH."""
    if os.environ.get("CAIRN_BIN"):
        return os.environ["CAIRN_BIN"]
    root = Path(__file__).resolve().parents[2]
    target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
    for profile in ("debug", "release"):
        candidate = target / profile / "cairn"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("cairn")
    if not found:
        raise ClusterError("no cairn binary: build it (cargo build -p cairn-cli) or set CAIRN_BIN")
    return found


class Cluster:
    """A container cluster described by its host-side cluster directory."""

    def __init__(self, dir, nodes=NODES_DEFAULT, image=IMAGE_DEFAULT, prefix=None, tag=None):
        self.dir = Path(dir).resolve()
        self.nodes = nodes
        self.image = image
        self.cairn = cairn_binary()
        # Chosen by `up` (a stale network Docker cannot remove must not block the next cluster).
        self.prefix = prefix
        self.tag = tag

    def network(self, k):
        """Node K's home network."""
        return f"cairn-{self.tag}-net{k}"

    def ip_on(self, net_k, node_j):
        """Node J's address on node K's home network (its own home address when J == K)."""
        return f"{self.prefix}.{net_k}.{10 if net_k == node_j else 10 + node_j}"

    def home_addr(self, k):
        return f"{self.ip_on(k, k)}:{PORT}"

    @staticmethod
    def load(dir):
        dir = Path(dir).resolve()
        marker = dir / MARKER
        if not marker.is_file():
            raise ClusterError(f"{dir} is not a container cluster directory (no {MARKER})")
        meta = json.loads(marker.read_text())
        return Cluster(dir, nodes=meta["nodes"], image=meta["image"], prefix=meta["prefix"],
                       tag=meta["tag"])

    @property
    def compose_file(self):
        return self.dir / "docker" / "compose.json"

    def compose(self, *args, check=True, timeout=COMMAND_TIMEOUT_S * 3):
        # docker-compose (v1, as on this project's machines), else the compose plugin.
        tool = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
        return run([*tool, "-p", PROJECT, "-f", str(self.compose_file), *args],
                   check=check, timeout=timeout)

    # --- up -------------------------------------------------------------------------------

    def up(self):
        if not 1 <= self.nodes <= NODES_MAX:
            raise ClusterError(f"--nodes {self.nodes} is outside 1..{NODES_MAX}")
        taken = leftovers()
        if taken["containers"] or taken["volumes"]:
            raise ClusterError(
                f"a cairn container cluster already exists ({describe(taken)}); "
                "take it down first: deploy/docker/cluster down --dir DIR")
        if self.dir.exists() and any(self.dir.iterdir()):
            raise ClusterError(f"{self.dir} exists and is not empty; give an empty or new --dir")
        if run(["docker", "image", "inspect", self.image], check=False).returncode != 0:
            raise ClusterError(f"no image {self.image}: build it with deploy/docker/build-image")
        # Networks an earlier cluster left behind are removed if Docker can; the new ones get
        # their own names and subnets either way.
        for net in taken["networks"]:
            run(["docker", "network", "rm", net], check=False)
        self.prefix = free_prefix(self.nodes)
        self.tag = secrets.token_hex(3)
        (self.dir / "docker").mkdir(parents=True, exist_ok=True)
        (self.dir / MARKER).write_text(json.dumps({
            "nodes": self.nodes, "image": self.image, "prefix": self.prefix, "tag": self.tag}))
        self._certificates()
        self._configs()
        self.compose_file.write_text(json.dumps(self._compose(), indent=2))
        self.compose("up", "-d", "--no-build")
        self.wait_ready()

    def _certificates(self):
        c = self.cairn
        run([c, "cert", "ca", "--dir", str(self.dir), "--name", "cairn-docker"])
        # The node runs as NODE_UID and must read the context key through the bind mount.
        context_key = self.dir / "context.key"
        if context_key.exists():
            if os.geteuid() == 0:
                os.chown(context_key, NODE_UID, NODE_UID)
            else:
                context_key.chmod(0o644)
        # An admin client. A `cairn` whose client certificates carry roles gets asked for the
        # admin role; one without roles signs a client that may do everything.
        role = (["--role", "admin"]
                if "--role" in run([c, "cert", "client", "--help"], check=False).stdout else [])
        run([c, "cert", "client", "--ca-dir", str(self.dir), "--name", "admin", *role,
             "--out", str(self.dir / "client")])
        # The same identity where membership commands (join, leave, remove, replace) look for
        # the admin one, so `cairn leave --cluster DIR` works from the host as in `cairn dev`.
        admin = self.dir / "admin"
        admin.mkdir(exist_ok=True)
        for ext in ("pem", "key"):
            shutil.copy2(self.dir / "client" / f"client.{ext}", admin / f"admin.{ext}")
        for k in range(1, self.nodes + 1):
            out = self.dir / node_name(k)
            run([c, "cert", "node", "--ca-dir", str(self.dir), "--name", node_name(k),
                 "--out", str(out), "--host", self.ip_on(k, k), "--host", container(k)])
            # The node runs as NODE_UID and must read its key through the bind mount.
            key = out / "node.key"
            if os.geteuid() == 0:
                os.chown(key, NODE_UID, NODE_UID)
            else:
                key.chmod(0o644)

    def _node_toml(self, k, listen, advertise, data_dir, ca, cert, key):
        lines = [
            f'name = "{node_name(k)}"',
            f'listen = "{listen}"',
        ]
        if advertise:
            lines.append(f'advertise = "{advertise}"')
        lines += [
            f'data_dir = "{data_dir}"',
            "",
            "[tls]",
            f'ca = "{ca}"',
            f'cert = "{cert}"',
            f'key = "{key}"',
            "",
            "[cluster]",
            f"replicas = {min(3, self.nodes)}",
            "partitions = 64",
            f'seeds = ["{self.home_addr(1)}"]',
            # Every node computes the same layout version 1 over all of them.
            "initial_members = [" + ", ".join(
                f'"{node_name(k)}"' for k in range(1, self.nodes + 1)) + "]",
            "",
            "[anti_entropy]",
            f"interval_ms = {AE_INTERVAL_MS}",
            "",
        ]
        return "\n".join(lines)

    def _configs(self):
        for k in range(1, self.nodes + 1):
            host = self._node_toml(k, self.home_addr(k), None, "data", "../ca.pem", "node.pem",
                                   "node.key")
            (self.dir / node_name(k) / "node.toml").write_text(
                "# The host's view of a container node: `listen` is where the host dials it.\n"
                "# The container runs ../docker/" + node_name(k) + ".toml.\n" + host)
            inside = self._node_toml(k, f"0.0.0.0:{PORT}", self.home_addr(k), "/data",
                                     "/etc/cairn/ca.pem", "/etc/cairn/node.pem",
                                     "/etc/cairn/node.key")
            (self.dir / "docker" / f"{node_name(k)}.toml").write_text(inside)

    def _compose(self):
        services = {}
        for k in range(1, self.nodes + 1):
            nd = self.dir / node_name(k)
            services[node_name(k)] = {
                "image": self.image,
                "container_name": container(k),
                "hostname": container(k),
                "command": ["start", "--config", "/etc/cairn/node.toml"],
                "user": f"{NODE_UID}:{NODE_UID}",
                "read_only": True,
                "cap_drop": ["ALL"],
                "security_opt": ["no-new-privileges=true"],
                "stop_grace_period": "10s",
                "restart": "no",
                "labels": {"cairn.cluster": str(self.dir)},
                "volumes": [
                    f"{self.dir / 'docker' / (node_name(k) + '.toml')}:/etc/cairn/node.toml:ro",
                    f"{self.dir / 'ca.pem'}:/etc/cairn/ca.pem:ro",
                    # The cluster's context key: nodes look for it next to ca.pem.
                    f"{self.dir / 'context.key'}:/etc/cairn/context.key:ro",
                    f"{nd / 'node.pem'}:/etc/cairn/node.pem:ro",
                    f"{nd / 'node.key'}:/etc/cairn/node.key:ro",
                    f"{volume(k)}:/data",
                ],
                "networks": {self.network(j): {"ipv4_address": self.ip_on(j, k)}
                             for j in range(1, self.nodes + 1)},
            }
        networks = {self.network(j): {
            "name": self.network(j),
            "driver": "bridge",
            "internal": True,
            "labels": {"cairn.cluster": str(self.dir)},
            "ipam": {"config": [{"subnet": f"{self.prefix}.{j}.0/24",
                                 "gateway": f"{self.prefix}.{j}.1"}]},
        } for j in range(1, self.nodes + 1)}
        volumes = {volume(k): {"name": volume(k), "labels": {"cairn.cluster": str(self.dir)}}
                   for k in range(1, self.nodes + 1)}
        return {"version": "2.4", "services": services, "networks": networks, "volumes": volumes}

    # --- talking to it ----------------------------------------------------------------------

    def cli(self, *args, timeout=COMMAND_TIMEOUT_S):
        """Runs `cairn ARGS --cluster DIR`; returns (exit code, stdout, stderr)."""
        try:
            p = subprocess.run([self.cairn, *args, "--cluster", str(self.dir)],
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, "", f"cairn {' '.join(args)} did not finish within {timeout} s"
        return p.returncode, p.stdout, p.stderr

    def members_up(self, k):
        """How many members node K sees up (None when it does not answer)."""
        code, out, _ = self.cli("status", "--node", node_name(k), "--json", timeout=20)
        if code != 0:
            return None
        try:
            members = json.loads(out)["members"]
        except (ValueError, KeyError):
            return None
        return sum(1 for m in members if m.get("status") == "up")

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        """Waits until every node sees every node up; raises with the last view otherwise."""
        deadline = time.monotonic() + timeout
        views = {}
        while time.monotonic() < deadline:
            views = {k: self.members_up(k) for k in range(1, self.nodes + 1)}
            if all(v == self.nodes for v in views.values()):
                return time.monotonic()
            time.sleep(1)
        raise ClusterError(
            f"not every node sees {self.nodes} members up within {timeout} s: "
            + ", ".join(f"{node_name(k)} sees {v}" for k, v in views.items())
            + f" (logs: docker logs {container(1)})")

    # --- faults ------------------------------------------------------------------------------

    def docker(self, *args, check=True):
        return run(["docker", *args], check=check)

    def cut(self, a, b):
        """Cuts the link between nodes A and B (both directions)."""
        self.docker("network", "disconnect", self.network(b), container(a))
        self.docker("network", "disconnect", self.network(a), container(b))

    def mend(self, a, b):
        """Restores the link between nodes A and B, at their usual addresses."""
        self.docker("network", "connect", "--ip", self.ip_on(b, a), self.network(b), container(a))
        self.docker("network", "connect", "--ip", self.ip_on(a, b), self.network(a), container(b))

    def attached(self):
        """{node: set of home networks (by node number) it is attached to}."""
        out = {}
        for k in range(1, self.nodes + 1):
            p = self.docker("inspect", "--format", "{{json .NetworkSettings.Networks}}",
                            container(k), check=False)
            nets = json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else {}
            nets = nets or {}
            out[k] = {j for j in range(1, self.nodes + 1) if self.network(j) in nets}
        return out

    def state(self, k):
        p = self.docker("inspect", "--format", "{{.State.Status}}", container(k), check=False)
        return p.stdout.strip() if p.returncode == 0 else "missing"

    def heal(self):
        """Every node running and unpaused, every link restored."""
        for k in range(1, self.nodes + 1):
            s = self.state(k)
            if s == "paused":
                self.docker("unpause", container(k))
            elif s == "missing":
                self.recreate(k)
        for k, nets in self.attached().items():
            for j in range(1, self.nodes + 1):
                if j not in nets:
                    self.docker("network", "connect", "--ip", self.ip_on(j, k), self.network(j),
                                container(k))
        for k in range(1, self.nodes + 1):
            if self.state(k) != "running":
                self.docker("start", container(k))

    def destroy(self, k):
        """Kills node K and removes its container and volume (disk loss). The container is
        removed only once Docker has seen it exit: removing one mid-exit can leave a stale
        network endpoint behind (moby/moby#17217)."""
        self.docker("kill", "--signal", "KILL", container(k), check=False)
        run(["docker", "wait", container(k)], check=False, timeout=COMMAND_TIMEOUT_S)
        self.docker("rm", "-v", container(k))
        self.docker("volume", "rm", volume(k))

    def recreate(self, k):
        """Creates node K's container again (on a fresh volume, if `destroy` removed it)."""
        self.compose("up", "-d", "--no-deps", "--no-build", node_name(k))

    def save_logs(self, out):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for k in range(1, self.nodes + 1):
            p = run(["docker", "logs", "--timestamps", container(k)], check=False)
            (out / f"{node_name(k)}.log").write_text((p.stdout or "") + (p.stderr or ""))

    # --- down --------------------------------------------------------------------------------

    def down(self):
        """Removes the containers, networks and volumes, then the cluster directory. Returns
        warnings: networks Docker would not remove although nothing is attached to them (a
        Docker bug, moby/moby#17217: a stale endpoint only a daemon restart clears; they hold
        no container and later clusters use other names and subnets)."""
        errors = []
        if self.compose_file.is_file():
            p = self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5",
                             check=False)
            if p.returncode != 0:
                errors.append(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "")
        mine = {
            "containers": [container(k) for k in range(1, self.nodes + 1)],
            "networks": [self.network(k) for k in range(1, self.nodes + 1)],
            "volumes": [volume(k) for k in range(1, self.nodes + 1)],
        }
        warnings = []
        deadline = time.monotonic() + DOWN_TIMEOUT_S
        while True:
            left = {kind: [n for n in names if n in leftovers()[kind]]
                    for kind, names in mine.items()}
            if left["containers"]:
                run(["docker", "rm", "-f", "-v", *left["containers"]], check=False)
            for net in left["networks"]:
                run(["docker", "network", "rm", net], check=False)
            if left["volumes"]:
                run(["docker", "volume", "rm", "-f", *left["volumes"]], check=False)
            left = {kind: [n for n in names if n in leftovers()[kind]]
                    for kind, names in mine.items()}
            if not any(left.values()):
                break
            if time.monotonic() > deadline:
                if left["containers"] or left["volumes"]:
                    raise ClusterError(f"could not remove {describe(left)}: {'; '.join(errors)}")
                for net in left["networks"]:
                    warnings.append(
                        f"Docker keeps network {net} although nothing is attached to it "
                        "(a stale endpoint, moby/moby#17217; `docker network rm` works again "
                        "after the Docker daemon restarts)")
                break
            time.sleep(1)
        shutil.rmtree(self.dir)
        return warnings


def leftovers():
    """Containers, networks and volumes named like this module's, whoever made them."""
    def names(kind, fmt):
        p = run(["docker", kind, "ls", *(["-a"] if kind == "container" else []),
                 "--format", fmt], check=False)
        return [n for n in p.stdout.split() if n.startswith("cairn-")]
    return {
        "containers": [n for n in names("container", "{{.Names}}") if n.startswith("cairn-node")],
        "networks": [n for n in names("network", "{{.Name}}")
                     if re.fullmatch(r"cairn-([0-9a-f]{6}-)?net[0-9]+", n)],
        "volumes": [n for n in names("volume", "{{.Name}}")
                    if n.startswith("cairn-node") and n.endswith("-data")],
    }


def free_prefix(nodes):
    """The first candidate prefix whose home subnets overlap no existing Docker network."""
    p = run(["docker", "network", "ls", "-q"], check=False)
    ids = p.stdout.split()
    taken = []
    if ids:
        p = run(["docker", "network", "inspect", "--format",
                 "{{range .IPAM.Config}}{{.Subnet}} {{end}}", *ids], check=False)
        for subnet in p.stdout.split():
            try:
                taken.append(ipaddress.ip_network(subnet, strict=False))
            except ValueError:
                pass

    def free(prefix):
        return not any(ipaddress.ip_network(f"{prefix}.{k}.0/24").overlaps(t)
                       for k in range(1, nodes + 1) for t in taken)

    wanted = os.environ.get("CAIRN_DOCKER_SUBNET_PREFIX")
    if wanted:
        if not free(wanted):
            raise ClusterError(f"CAIRN_DOCKER_SUBNET_PREFIX={wanted}: its subnets overlap an "
                               "existing Docker network")
        return wanted
    for prefix in SUBNET_PREFIXES:
        if free(prefix):
            return prefix
    raise ClusterError(f"every candidate subnet ({SUBNET_PREFIXES[0]}.K.0/24 to "
                       f"{SUBNET_PREFIXES[-1]}.K.0/24) overlaps an existing Docker network; "
                       "set CAIRN_DOCKER_SUBNET_PREFIX")


def describe(left):
    return "; ".join(f"{kind}: {' '.join(names)}" for kind, names in left.items() if names)
