#!/usr/bin/env python3
"""Hetzner Cloud's metadata API, served to a QEMU guest for tests/image/boot-check.sh (hetzner.sh).

    metadata_server.py write DIR --instance-id ID --hostname NAME --mac MAC --public-key FILE --user-data FILE
        writes DIR/metadata.json (the document below) and DIR/userdata
    metadata_server.py serve DIR
        answers one HTTP request on stdin/stdout and appends it to DIR/requests.log

`serve` is what QEMU runs for every TCP connection the guest opens to 169.254.169.254:80
(`-netdev user,guestfwd=tcp:169.254.169.254:80-cmd:...`): the connection is the child's stdin and stdout. A
listening server behind `guestfwd=...-tcp:127.0.0.1:PORT` is not an option: that form is one character device,
connected once when QEMU starts, not one connection per guest connection, and cloud-init opens several.
Nothing listens on the host, and nothing leaves it.

The paths and the document are those cloud-init's Hetzner datasource reads (cloudinit/sources/DataSourceHetzner.py,
25.1): /hetzner/v1/metadata (instance-id, hostname, public-keys, network-config, ...), /hetzner/v1/metadata/KEY (one
value; cloud-init asks for instance-id to see whether the network is already up) and /hetzner/v1/userdata (raw).
Hetzner serves the document as YAML; this serves it as JSON, which is YAML to the yaml.safe_load cloud-init reads it
with.
"""

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

PREFIX = "/hetzner/v1"


def hetzner_metadata(instance_id, hostname, mac, public_key):
    """The document Hetzner serves, with the fields cloud-init uses, shaped like a real server's."""
    return {
        "hostname": hostname,
        "instance-id": int(instance_id),
        "local-ipv4": "",
        "public-ipv4": "169.254.169.15",
        "availability-zone": "fsn1-dc14",
        "region": "eu-central",
        "public-keys": [public_key],
        # cloud-init renders this (renaming the NIC with MAC to eth0), not a DHCP fallback of its own: on Hetzner the
        # IPv6 address is static. DNS is QEMU's, which a restricted user network does not answer.
        "network-config": {
            "version": 1,
            "config": [
                {
                    "type": "physical",
                    "name": "eth0",
                    "mac_address": mac,
                    "subnets": [
                        {"type": "dhcp", "ipv4": True, "dns_nameservers": ["169.254.169.3"]},
                        {
                            "type": "static",
                            "ipv6": True,
                            "address": "2001:db8:1:2::1/64",
                            "gateway": "fe80::1",
                        },
                    ],
                }
            ],
        },
    }


def write(args):
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    key = Path(args.public_key).read_text().strip()
    doc = hetzner_metadata(args.instance_id, args.hostname, args.mac, key)
    (d / "metadata.json").write_text(json.dumps(doc, indent=2) + "\n")
    (d / "userdata").write_bytes(Path(args.user_data).read_bytes())
    (d / "requests.log").touch()


class Handler(BaseHTTPRequestHandler):
    """One request on stdin/stdout; HTTP/1.0, so the connection ends with the response."""

    data_dir = Path(".")

    def setup(self):
        self.rfile = sys.stdin.buffer
        self.wfile = sys.stdout.buffer

    def finish(self):
        self.wfile.flush()

    def answer(self):
        meta = json.loads((self.data_dir / "metadata.json").read_text())
        if self.path == PREFIX + "/metadata":
            return 200, json.dumps(meta, indent=2).encode() + b"\n"
        if self.path == PREFIX + "/userdata":
            return 200, (self.data_dir / "userdata").read_bytes()
        key = self.path.removeprefix(PREFIX + "/metadata/")
        if key != self.path and key in meta:
            value = meta[key]
            text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            return 200, text.encode()
        return 404, b"not found\n"

    def do_GET(self):
        status, body = self.answer()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        with open(self.data_dir / "requests.log", "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {format % args}\n")


def serve(args):
    Handler.data_dir = Path(args.dir)
    # QEMU gives the child the connection as stderr too: a traceback goes to the log, not to the guest.
    log = os.open(Handler.data_dir / "requests.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 2)
    Handler(None, ("guest", 0), None)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("dir")
    for opt in ("--instance-id", "--hostname", "--mac", "--public-key", "--user-data"):
        w.add_argument(opt, required=True)
    s = sub.add_parser("serve")
    s.add_argument("dir")
    args = p.parse_args()
    write(args) if args.cmd == "write" else serve(args)


if __name__ == "__main__":
    main()
