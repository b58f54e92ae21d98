"""`make bench-backup`: backup create / restore against plain `docker save` / `docker load`.

Builds a multi-GB test image of its own (FROM aads-base:bookworm plus one layer of random data,
with the labels and model_set.json of a real build; random data is the worst case for zstd),
records it as a build of v5.5.4-dinov3 in a temp ledger (a temp host: own config, state and
versions dirs, a registry address nothing listens on), then, alternating in the same run:

  docker save -o FILE            vs  orchestrator backup create   (uncompressed)
  docker load -i FILE            vs  orchestrator backup restore  (image removed before each)
  orchestrator backup create --compress zstd, and its restore

Throughput is image MB (docker save's bytes) per wall second of the whole command, best of
--repeats; the orchestrator's peak RSS comes from the kernel (wait4 ru_maxrss of its process).
Compression is also measured on a real serving image when one is on the engine (random data
says nothing about the ratio). The test image is removed at the end. Results go to
docs/benchmarks/backup.json and the "## Backup" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
import yaml  # noqa: E402

from orchestrator.ledger import Ledger  # noqa: E402
from aads_manifest import manifest_sha256  # noqa: E402
from benchmarks._common import free_port, machine, sayer, write_section  # noqa: E402

VERSION = "v5.5.4-dinov3"
BASE_IMAGE = os.environ.get("AADS_BASE_IMAGE", "aads-base:bookworm")
SECTION = "## Backup"
MB = 1e6


LOADAVG: list[float] = []   # 1-minute load average before each measured command

say = sayer("bench-backup")


class Child:
    """A child process measured with wait4 (communicate() would reap it before we see rusage)."""

    @staticmethod
    def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, int, str]:
        LOADAVG.append(os.getloadavg()[0])
        out_file = tempfile.TemporaryFile()
        err_file = tempfile.TemporaryFile()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out_file, stderr=err_file)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read().decode(), err_file.read().decode(errors="replace")
        if proc.returncode != 0:
            raise SystemExit(f"bench-backup: {' '.join(argv[:5])} exited {proc.returncode}: {err[-1500:]}")
        return wall, usage.ru_maxrss * 1024, out


def build_test_image(client: docker.DockerClient, size_bytes: int, folder: Path) -> str:
    model_set = {"version": VERSION, "files": {"adapters/tomato/adapter_model.safetensors": "0" * 64}}
    dockerfile = (
        f"FROM {BASE_IMAGE}\n"
        f"RUN mkdir -p /data && head -c {size_bytes} /dev/urandom > /data/random.bin\n"
        "COPY model_set.json /models/model_set.json\n"
        f"LABEL aads.version={VERSION} aads.manifest-sha256={manifest_sha256(folder)} aads.bench=backup\n"
        "ENV AADS_MODEL_DIR=/models\n"
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), "model_set.json": json.dumps(model_set).encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    tag = f"aads-bench-backup:{secrets.token_hex(4)}"
    image, _ = client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True, forcerm=True, nocache=True)
    return image.id


def serving_image(client: docker.DockerClient, folder: Path) -> str | None:
    """A real serving image of VERSION built from this folder, if the engine has one."""
    sha = manifest_sha256(folder)
    for image in client.images.list(filters={"label": f"aads.version={VERSION}"}):
        labels = image.labels or {}
        if labels.get("aads.manifest-sha256") == sha and "aads.bench" not in labels and (image.attrs.get("Size") or 0) > 200e6:
            return image.id
    return None


class TempHost:
    """Its own config, state dir and versions dir; the orchestrator runs as a separate process."""

    def __init__(self, root: Path):
        self.root = root
        (root / "versions").mkdir(parents=True)
        shutil.copytree(ROOT / "versions" / VERSION, root / "versions" / VERSION)
        self.registry = f"127.0.0.1:{free_port()}/aads-bench-airgap"
        (root / "orchestrator.yaml").write_text(yaml.safe_dump({
            "registry": self.registry, "state_dir": str(root / "state"), "versions_dir": str(root / "versions")}))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AADS_")}
        self.env["AADS_CONFIG"] = str(root / "orchestrator.yaml")

    @property
    def folder(self) -> Path:
        return self.root / "versions" / VERSION

    def record(self, image_id: str, size: int) -> None:
        ledger = Ledger(self.root / "state")
        ledger.record_build(version=VERSION, variant="cpu", image_id=image_id,
                            manifest_sha256=manifest_sha256(self.folder), git_commit=None, size_bytes=size, golden=[])
        ledger.close()

    def forget(self) -> None:
        ledger = Ledger(self.root / "state")
        with ledger.transaction() as db:
            db.execute("DELETE FROM pushes WHERE version = ?", (VERSION,))
            db.execute("DELETE FROM builds WHERE version = ?", (VERSION,))
        ledger.close()

    def orchestrator(self, *args: str) -> tuple[float, int, dict[str, Any]]:
        wall, rss, out = Child.run([sys.executable, "-m", "orchestrator", *args, "--json"], env=self.env,
                                   cwd=self.root)
        return wall, rss, json.loads(out)


def remove_image(client: docker.DockerClient, image_id: str) -> None:
    try:
        client.images.remove(image_id, force=True)
    except docker.errors.ImageNotFound:
        pass


def evict(path: Path) -> None:
    """Flush a file and drop it from the page cache, so the command reading it next reads the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def settle(path: Path | None = None) -> None:
    """Drop the file just written and flush dirty pages, so the next run does not pay for this one."""
    if path is not None:
        path.unlink(missing_ok=True)
    os.sync()


def bench_image(client: docker.DockerClient, host: TempHost, image_id: str, work: Path, repeats: int,
                label: str, loads: bool = True) -> dict[str, Any]:
    """Time every command on `image_id`. `loads` False: no load/restore (the image is not ours to remove)."""
    out = work / "out"
    out.mkdir(exist_ok=True)
    plain = work / "plain.tar"
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("docker_save", "create", "create_zstd", "docker_load",
                                                             "restore", "restore_zstd")}
    image_bytes = 0
    try:
        for i in range(repeats):
            ours_first = i % 2 == 1  # alternate the order: neither side always gets the warmer cache
            say(f"{label}: round {i + 1}/{repeats}")

            def docker_save() -> None:
                wall, _, _ = Child.run(["docker", "save", "-o", str(plain), image_id])
                runs["docker_save"].append({"seconds": wall})

            def create() -> None:
                wall, rss, res = host.orchestrator("backup", "create", VERSION, "--out", str(out))
                runs["create"].append({"seconds": wall, "stream_seconds": res["seconds"], "rss": rss,
                                       "archive": res["archive"], "size": res["size"],
                                       "image_bytes": res["image_bytes"]})

            def docker_load() -> None:
                remove_image(client, image_id)  # the image must be gone before each load
                evict(plain)
                wall, _, _ = Child.run(["docker", "load", "-i", str(plain)])
                runs["docker_load"].append({"seconds": wall})

            def restore() -> None:
                remove_image(client, image_id)
                host.forget()
                evict(Path(runs["create"][-1]["archive"]))
                wall, rss, res = host.orchestrator("backup", "restore", runs["create"][-1]["archive"])
                assert res["loaded"], res
                runs["restore"].append({"seconds": wall, "stream_seconds": res["seconds"], "rss": rss})

            for step in ((create, docker_save) if ours_first else (docker_save, create)):
                step()
                os.sync()
            image_bytes = plain.stat().st_size
            assert runs["create"][-1]["image_bytes"] == image_bytes, "docker save and the archive's image differ"
            if loads:
                for step in ((restore, docker_load) if ours_first else (docker_load, restore)):
                    step()
                    os.sync()  # the next command must not pay for this one's dirty pages
            settle(Path(runs["create"][-1]["archive"]))
            wall, rss, res = host.orchestrator("backup", "create", VERSION, "--out", str(out), "--compress", "zstd")
            runs["create_zstd"].append({"seconds": wall, "stream_seconds": res["seconds"], "rss": rss,
                                        "size": res["size"], "ratio": res["ratio"], "archive": res["archive"]})
            assert res["image_bytes"] == image_bytes, "docker save and the archive's image differ in size"
            if loads:
                remove_image(client, image_id)
                host.forget()
                evict(Path(res["archive"]))
                wall, rss, res = host.orchestrator("backup", "restore", res["archive"])
                assert res["loaded"], res
                runs["restore_zstd"].append({"seconds": wall, "stream_seconds": res["seconds"], "rss": rss})
            settle(Path(runs["create_zstd"][-1]["archive"]))
    finally:
        plain.unlink(missing_ok=True)
        for f in out.glob("*"):
            f.unlink()

    def best(key: str) -> dict[str, Any] | None:
        return min(runs[key], key=lambda r: r["seconds"]) if runs[key] else None

    def mbps(run: dict[str, Any] | None, field: str = "seconds") -> float | None:
        return round(image_bytes / MB / run[field], 1) if run else None

    summary: dict[str, Any] = {"label": label, "image_id": image_id, "image_bytes": image_bytes, "repeats": repeats,
                               "runs": runs}
    for key in runs:
        b = best(key)
        if b is None:
            continue
        summary[key] = {"seconds": round(b["seconds"], 2), "mb_per_s": mbps(b),
                        "median_seconds": round(statistics.median(r["seconds"] for r in runs[key]), 2),
                        **({"stream_mb_per_s": mbps(b, "stream_seconds")} if "stream_seconds" in b else {}),
                        **({"peak_rss_mb": round(max(r["rss"] for r in runs[key]) / MB, 1)} if "rss" in b else {})}
    summary["create_vs_save"] = round(runs_ratio(summary, "create", "docker_save"), 3)
    if loads:
        summary["restore_vs_load"] = round(runs_ratio(summary, "restore", "docker_load"), 3)
    z = best("create_zstd")
    summary["zstd"] = {"ratio": z["ratio"], "archive_bytes": z["size"], "saved_bytes": image_bytes - z["size"]}
    return summary


def runs_ratio(summary: dict[str, Any], ours: str, theirs: str, field: str = "seconds") -> float:
    """Our speed as a share of docker's (1.0 = as fast); `field` "median_seconds" for medians."""
    return summary[theirs][field] / summary[ours][field]


def row(summary: dict[str, Any], name: str, key: str, theirs: str) -> str:
    """One table row: best and median seconds, and speed relative to docker's (best/best, median/median)."""
    ours = summary[key]
    rss = f"{ours['peak_rss_mb']} MB" if "peak_rss_mb" in ours else "-"
    return (f"| {name} | {ours['seconds']} | {ours['median_seconds']} | {ours['mb_per_s']} | "
            f"{runs_ratio(summary, key, theirs):.2f} | {runs_ratio(summary, key, theirs, 'median_seconds'):.2f} | {rss} |")


def render(result: dict[str, Any]) -> str:
    main = result["random"]
    gb = main["image_bytes"] / 1e9
    lines = [SECTION, "",
             f"`make bench-backup` ({result['machine']}; {result['when']}). Test image: {gb:.2f} GB "
             f"(`{BASE_IMAGE}` + one layer of random data), best of {main['repeats']} runs, each command run as "
             "its own process and timed whole (wall clock, start-up included); plain docker and the orchestrator "
             "alternate (order swapped every round) on the same image in the same run; each input file is "
             "flushed and dropped from the page cache before it is read. Peak RSS: the orchestrator process "
             f"(wait4 ru_maxrss). 1-minute load average before the commands: {result['loadavg'][0]}–"
             f"{result['loadavg'][1]} (the benchmark's own commands included).",
             "",
             "| command | best s | median s | MB/s (best) | vs docker (best) | vs docker (median) | peak RSS |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
             *[row(main, name, key, theirs) for name, key, theirs in (
                 ("`docker save -o`", "docker_save", "docker_save"),
                 ("`backup create`", "create", "docker_save"),
                 ("`backup create --compress zstd`", "create_zstd", "docker_save"),
                 ("`docker load -i`", "docker_load", "docker_load"),
                 ("`backup restore` (verifies while loading)", "restore", "docker_load"),
                 ("`backup restore` of the zstd archive", "restore_zstd", "docker_load"))],
             "",
             f"Targets: create and restore at ≥ 90% of docker save / load uncompressed — measured "
             f"{main['create_vs_save']:.0%} and {main['restore_vs_load']:.0%} (best against best; median against "
             f"median {runs_ratio(main, 'create', 'docker_save', 'median_seconds'):.0%} and "
             f"{runs_ratio(main, 'restore', 'docker_load', 'median_seconds'):.0%}); peak RSS under 200 MB for a multi-GB "
             f"image — measured {max(main[k]['peak_rss_mb'] for k in ('create', 'restore', 'create_zstd', 'restore_zstd'))} MB "
             "at most.", ""]
    comp = ["Compression (zstd level 3, multithreaded on every core):", "",
            "| image | image MB | archive MB | ratio | create s (MB/s) | restore s |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, name in (("random", "random data (worst case)"), ("serving", "real serving image (CPU torch)")):
        r = result.get(key)
        if not r:
            continue
        comp.append(f"| {name} | {r['image_bytes'] / MB:,.0f} | {r['zstd']['archive_bytes'] / MB:,.0f} | "
                    f"{r['zstd']['ratio']} | {r['create_zstd']['seconds']} ({r['create_zstd']['mb_per_s']}) | "
                    f"{r['restore_zstd']['seconds'] if 'restore_zstd' in r else '-'} |")
    if result.get("serving") and result["serving"].get("create"):
        s = result["serving"]
        comp += ["", f"Uncompressed, the same serving image: create {s['create']['seconds']} s, "
                     f"{s['create_vs_save']:.0%} of docker save's speed (not removed and restored: the image "
                     "is not the benchmark's own)."]
    return "\n".join(lines + comp + ["", "JSON: `docs/benchmarks/backup.json`.", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=2.0, help="random-data layer of the test image in GB (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each command; the best counts (default 3)")
    p.add_argument("--no-serving", action="store_true", help="skip the compression figures of a real serving image")
    p.add_argument("--json-out", default=str(ROOT / "docs" / "benchmarks" / "backup.json"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file to update ('' = none)")
    args = p.parse_args(argv)

    client = docker.from_env(timeout=3600)
    work = Path(tempfile.mkdtemp(prefix="aads-bench-backup-", dir=os.environ.get("AADS_BENCH_DIR")))
    host = TempHost(work / "host")
    size = int(args.size_gb * 1e9)
    if shutil.disk_usage(work).free < 4 * size:
        raise SystemExit(f"bench-backup: {work} needs about {4 * size / 1e9:.0f} GB free")
    say(f"building a {args.size_gb:g} GB test image FROM {BASE_IMAGE} (random data)")
    t0 = time.perf_counter()
    image_id = build_test_image(client, size, host.folder)
    say(f"built {image_id[:19]} in {time.perf_counter() - t0:.0f}s")
    result: dict[str, Any] = {"machine": machine(), "when": time.strftime("%Y-%m-%d"), "base_image": BASE_IMAGE}
    try:
        host.record(image_id, size)
        result["random"] = bench_image(client, host, image_id, work, args.repeats, "random")
        if not args.no_serving:
            real = serving_image(client, host.folder)
            if real is None:
                say(f"no serving image of {VERSION} on the engine: compression measured on random data only")
            else:
                host.forget()
                host.record(real, int(client.images.get(real).attrs["Size"]))
                result["serving"] = bench_image(client, host, real, work, 1, "serving", loads=False)
    finally:
        remove_image(client, image_id)
        shutil.rmtree(work, ignore_errors=True)
    result["loadavg"] = [round(min(LOADAVG), 1), round(max(LOADAVG), 1)] if LOADAVG else [None, None]
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    print(text)
    if args.doc:
        write_section(Path(args.doc), SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
