"""The Kubernetes backend against the Kubernetes API double (tests/k8s_double), and the real
/usr/bin/kubectl pointed at the same double: `kubectl rollout undo` stays a valid way back.

Pushed versions are ledger records with made-up digests (no images are built); a registry double
answers the tag -> digest check. The real registry is used once (engine-marked tamper test).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from orchestrator.backends import get_backend
from orchestrator.backends.kubernetes import RolloutBusy
from orchestrator.backends.kubernetes.errors import KubeForbidden, KubeNotFound, KubeUnreachable
from orchestrator.context import Context
from orchestrator.errors import ConfigError, SwitchFailed, TamperError, UsageError
from orchestrator.ledger import Ledger
from tests.k8s_double import KubeDouble
from tests.k8s_double.registry import RegistryDouble
from tests.kubectl import kubectl

ROOT = Path(__file__).resolve().parents[2]
NS, NAME = "aads", "aads-serving"
REPO_NAME = "aads-ulora"
# The name the cluster's nodes pull by (the registry double answers on loopback for the tag check).
CLUSTER_REPO = "registry.aads.test:5000/aads-ulora"
PULL_SECRET = "aads-registry"
OLD, NEW, THIRD, BROKEN = "v5.5.3-performance", "v5.5.4-dinov3", "v5.5.6-extra", "v5.5.5-broken"
VERSIONS = [OLD, NEW, THIRD, BROKEN]



def digest_of(version: str) -> str:
    return "sha256:" + hashlib.sha256(version.encode()).hexdigest()


def rendered_deployment() -> dict:
    out = subprocess.run([kubectl(), "kustomize", str(ROOT / "k8s/overlays/cpu")], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Env:
    """One cluster (double), one registry (double), one project dir with its ledger."""

    def __init__(self, tmp: Path, k8s: KubeDouble, registry: RegistryDouble):
        self.tmp, self.k8s, self.registry = tmp, k8s, registry
        self.repo = f"{registry.host}/{REPO_NAME}"
        self.kubeconfig = k8s.write_kubeconfig(tmp / "kubeconfig")
        (tmp / "kubeconfig-down").write_text(
            (tmp / "kubeconfig").read_text().replace(k8s.url, f"http://127.0.0.1:{free_port()}"))
        versions = tmp / "versions"
        for v in VERSIONS:
            src = ROOT / "versions" / (v if (ROOT / "versions" / v).is_dir() else NEW)
            shutil.copytree(src, versions / v)
        base = {"kind": "kubernetes", "kubeconfig": "kubeconfig", "namespace": NS, "deployment": NAME,
                "container": "serving", "timeout_s": 30, "repository": CLUSTER_REPO,
                "image_pull_secret": PULL_SECRET, "overlay": str(ROOT / "k8s/overlays/cpu")}
        (tmp / "orchestrator.yaml").write_text(yaml.safe_dump({
            "registry": self.repo, "state_dir": "state", "versions_dir": "versions", "default_target": "k8s",
            "targets": {
                "k8s": base,
                "k8s-missing": {**base, "deployment": "nope"},
                "k8s-down": {**base, "kubeconfig": "kubeconfig-down"},
                "k8s-locked": {**base, "namespace": "locked"},
                "k8s-impatient": {**base, "timeout_s": 1.5},
                "k8s-wrong-container": {**base, "container": "sidecar"},
            },
        }))
        ledger = Ledger(tmp / "state")
        # Both variants of each version, under one digest: the cpu overlay deploys `<v>-cpu`, the gpu
        # overlay (a container asking for nvidia.com/gpu) the plain tag; these tests are about the
        # rollout, not about which variant runs (tests/unit/test_variants.py covers that).
        for v in VERSIONS:
            for variant, tag in (("cpu", f"{v}-cpu"), ("cuda", v)):
                build = ledger.record_build(version=v, variant=variant, image_id=digest_of("image " + v),
                                            manifest_sha256="0" * 64, git_commit=None, size_bytes=None, golden=[])
                ledger.record_push(version=v, build_id=build.id, repository=self.repo, tag=tag, digest=digest_of(v))
                registry.tags[(REPO_NAME, tag)] = digest_of(v)
        ledger.close()
        k8s.mark_bad(self.image(BROKEN))

    def image(self, version: str) -> str:
        return f"{CLUSTER_REPO}@{digest_of(version)}"

    def ctx(self) -> Context:
        return Context(config_path=str(self.tmp / "orchestrator.yaml"))

    def backend(self, target: str = "k8s"):
        return get_backend(self.ctx(), target)

    def deployment(self) -> dict:
        return self.k8s.get("deployments", NS, NAME)

    def live_image(self) -> str:
        return self.deployment()["spec"]["template"]["spec"]["containers"][0]["image"]

    def replicasets(self) -> dict[int, dict]:
        return {int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]): rs
                for rs in self.k8s.list("replicasets", NS)}

    def patches(self) -> list[dict]:
        return [r for r in self.k8s.requests if r["method"] == "PATCH"]

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([kubectl(), "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.tmp / "kcache"),
                            "-n", NS, *args], capture_output=True, text=True, timeout=60)
        if check:
            assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
        return r

    def kubectl_history(self) -> list[tuple[int, str]]:
        out = self.kubectl("rollout", "history", f"deployment/{NAME}").stdout
        rows = [line.split(None, 1) for line in out.splitlines()[2:] if line.strip()]
        return [(int(r[0]), r[1].strip() if len(r) > 1 else "<none>") for r in rows]


@pytest.fixture
def env(tmp_path):
    registry = RegistryDouble().start()
    k8s = KubeDouble(ready_after_s=0.2).start()
    try:
        e = Env(tmp_path, k8s, registry)
        k8s.create_namespace(NS)
        k8s.create_namespace("locked")
        k8s.forbid("locked")
        d = rendered_deployment()
        d["metadata"]["namespace"] = NS
        d["spec"]["minReadySeconds"] = 0           # seconds-fast rollouts in tests
        # A stuck rollout is seen within seconds, yet a good one survives a stalled controller on a
        # loaded 2-core machine: 10 s without progress (condition times have second precision).
        d["spec"]["progressDeadlineSeconds"] = 10
        d["spec"]["template"]["spec"]["containers"][0]["image"] = e.image(OLD)
        d["spec"]["template"]["metadata"]["annotations"]["aads.version"] = OLD
        k8s.create("deployments", d)
        k8s.wait_for(lambda: e.deployment().get("status", {}).get("availableReplicas") == 2, what="first rollout")
        yield e
        assert not k8s.cluster.errors, k8s.cluster.errors
    finally:
        k8s.stop()
        registry.stop()


def test_switch_patches_the_digest_and_waits_for_the_rollout(env):
    result = env.backend().switch(NEW)
    assert result["outcome"] == "succeeded"
    assert (result["from_version"], result["to_version"], result["digest"]) == (OLD, NEW, digest_of(NEW))
    assert result["revision"] == 2 and {"resolve", "patch", "rollout", "finish"} <= set(result["phases"])
    d = env.deployment()
    assert env.live_image() == env.image(NEW)
    assert d["spec"]["template"]["metadata"]["annotations"]["aads.version"] == NEW
    assert d["metadata"]["annotations"]["kubernetes.io/change-cause"] == f"orchestrator switch {NEW}"
    # The rollout really finished: every pod runs the new image and is ready.
    assert d["status"]["updatedReplicas"] == d["status"]["availableReplicas"] == d["status"]["replicas"] == 2
    pods = env.k8s.list("pods", NS)
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {env.image(NEW)}
    # The controller copied the change-cause onto revision 2's ReplicaSet, where kubectl reads it.
    rss = env.replicasets()
    assert rss[2]["metadata"]["annotations"]["kubernetes.io/change-cause"] == f"orchestrator switch {NEW}"
    assert rss[1]["spec"]["replicas"] == 0
    (patch,) = env.patches()
    assert patch["content_type"] == "application/strategic-merge-patch+json"
    status = env.backend().status()
    assert status["live"]["version"] == NEW and status["live"]["revision"] == 2
    assert status["live"]["health"] == "ready" and status["drift"] == []
    ledger = env.ctx().ledger
    assert ledger.live("k8s").version == NEW and ledger.live("k8s").slot == "2"
    assert ledger.history("k8s")[-1].outcome == "succeeded"


def test_switch_to_the_live_version_is_a_noop(env):
    assert env.backend().up(NEW)["outcome"] == "succeeded"  # `up` on kubernetes: pin the applied Deployment
    rv = env.deployment()["metadata"]["resourceVersion"]
    result = env.backend().switch(NEW)
    assert result["outcome"] == "noop" and "already live" in result["reason"]
    assert env.deployment()["metadata"]["resourceVersion"] == rv
    assert len(env.patches()) == 1 and sorted(env.replicasets()) == [1, 2]


def test_rollback_is_kubectl_rollout_undo(env):
    env.backend().switch(NEW)
    result = env.backend().rollback()
    assert result["outcome"] == "succeeded" and (result["from_version"], result["to_version"]) == (NEW, OLD)
    assert env.live_image() == env.image(OLD)
    undo = env.patches()[-1]
    assert undo["content_type"] == "application/json-patch+json"
    # The controller adopted revision 1's ReplicaSet again: revision 3, history "1".
    rss = env.replicasets()
    assert sorted(rss) == [2, 3]
    assert rss[3]["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"
    assert rss[3]["spec"]["template"]["spec"]["containers"][0]["image"] == env.image(OLD)
    # ... and its change-cause is the one it had: undo restores the old annotations, as kubectl does.
    assert env.deployment()["metadata"]["annotations"]["kubernetes.io/change-cause"].startswith("kubectl apply")
    assert env.backend().status()["live"]["version"] == OLD
    # Once more: back to NEW (the previous revision now).
    assert env.backend().rollback()["to_version"] == NEW
    assert env.live_image() == env.image(NEW)


def test_rollback_to_version_picks_the_revision_by_its_version(env):
    b = env.backend()
    b.switch(NEW)
    b.switch(THIRD)
    result = env.backend().rollback(OLD)
    assert result["outcome"] == "succeeded" and result["to_version"] == OLD
    assert env.live_image() == env.image(OLD)
    assert env.replicasets()[4]["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"
    # A version no kept revision runs: one clear refusal, nothing changed.
    rv = env.deployment()["metadata"]["resourceVersion"]
    with pytest.raises(UsageError, match=f"no kept revision .* runs {BROKEN}"):
        env.backend().rollback(BROKEN)
    # The live one: a no-op.
    assert env.backend().rollback(OLD)["outcome"] == "noop"
    assert env.deployment()["metadata"]["resourceVersion"] == rv


def test_failed_rollout_is_undone_automatically(env):
    env.backend().switch(NEW)
    with pytest.raises(SwitchFailed) as err:
        env.backend().switch(BROKEN)
    message = str(err.value)
    assert "exceeded its progress deadline" in message, message
    assert "pods not ready" in message and f"rolled back to {NEW}" in message
    assert err.value.exit_code == 5  # the deadline (not the 30 s timeout_s) ended it: the message says so
    # Back on NEW, and the rollout of the undo finished: no broken pod left.
    assert env.live_image() == env.image(NEW)
    env.k8s.wait_for(lambda: {p["spec"]["containers"][0]["image"] for p in env.k8s.list("pods", NS)}
                     == {env.image(NEW)}, what="broken pods gone")
    # Revision 2's ReplicaSet came back as revision 4; the failed revision 3 is kept (never deleted)
    # and marked, so that no way back picks the template that just failed.
    rss = env.replicasets()
    assert sorted(rss) == [1, 3, 4]
    assert rss[4]["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "2"
    assert "progress deadline" in rss[3]["metadata"]["annotations"]["aads.failed"]
    assert not [r for r in env.k8s.requests if r["method"] == "DELETE"]
    ledger = env.ctx().ledger
    sw = ledger.history("k8s")[-1]
    assert sw.outcome == "reverted" and "progress deadline" in sw.reason
    assert sw.data["revision"] == 3 and sw.data["undo_revision"] == 4
    assert digest_of(BROKEN) in ledger.failed_digests()
    assert ledger.live("k8s").version == NEW
    status = env.backend().status()
    assert status["live"]["version"] == NEW and status["live"]["health"] == "ready"
    assert status["previous"]["revision"] == 1  # not the failed revision 3
    history = env.backend().history()
    rows = [(e["revision"], e["to_version"], e["outcome"]) for e in history["entries"]]
    assert rows == [(1, OLD, "superseded"), (3, BROKEN, "reverted"), (4, NEW, "succeeded")]
    assert history["entries"][2]["action"].startswith("undo after failed switch")
    assert history["success_rate"] == 0.5
    # kubectl shows the failed revision as such; --to-revision goes to the last good one before it.
    assert dict(env.kubectl_history())[3].startswith("FAILED, rolled back: orchestrator switch")
    env.kubectl("rollout", "undo", f"deployment/{NAME}", "--to-revision=1")
    env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s")
    assert env.live_image() == env.image(OLD)


def test_our_timeout_also_undoes(env):
    # A deadline the controller would take long to reach: the orchestrator's own timeout_s acts.
    env.k8s.store.update("deployments", {**env.deployment(), "spec": {**env.deployment()["spec"],
                                                                       "progressDeadlineSeconds": 600}})
    env.k8s.wait_for(lambda: env.deployment()["status"].get("observedGeneration") == 2, what="spec observed")
    with pytest.raises(SwitchFailed, match=r"did not finish within 1.5s.*rolled back to v5.5.3"):
        env.backend("k8s-impatient").switch(BROKEN)
    assert env.live_image() == env.image(OLD)


def test_a_rollout_in_progress_is_refused(env):
    env.k8s.cluster.paused = True  # the controller has not caught up: the rollout stays in progress
    env.kubectl("set", "image", f"deployment/{NAME}", f"serving={env.image(THIRD)}")
    rv = env.deployment()["metadata"]["resourceVersion"]
    with pytest.raises(RolloutBusy, match="in progress .*spec update to be observed.*refusing") as err:
        env.backend().switch(NEW)
    assert err.value.exit_code == 3
    assert env.deployment()["metadata"]["resourceVersion"] == rv
    assert not [p for p in env.patches() if "kubectl" not in p["query"].get("fieldManager", "")]
    env.k8s.cluster.paused = False
    # Once it has finished, the switch goes ahead.
    env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s")
    assert env.backend().switch(NEW)["outcome"] == "succeeded"
    # A paused Deployment is refused too (the controller would not roll it), switch and rollback alike.
    env.kubectl("rollout", "pause", f"deployment/{NAME}")
    for call in (lambda b: b.switch(OLD), lambda b: b.rollback()):
        with pytest.raises(RolloutBusy, match="is paused; resume it first"):
            call(env.backend())
    env.kubectl("rollout", "resume", f"deployment/{NAME}")
    assert env.backend().rollback()["to_version"] == THIRD


def test_unknown_target_and_deployment(env):
    with pytest.raises(ConfigError, match="unknown target 'nope'"):
        env.backend("nope")
    with pytest.raises(KubeNotFound, match="deployment aads/nope not found") as err:
        env.backend("k8s-missing").switch(NEW)
    assert err.value.exit_code == 2
    with pytest.raises(UsageError, match="no container 'sidecar'"):
        env.backend("k8s-wrong-container").switch(NEW)
    assert env.patches() == []


def test_api_unreachable_is_one_clear_error(env):
    started = time.monotonic()
    for call in (lambda b: b.switch(NEW), lambda b: b.status(), lambda b: b.rollback()):
        with pytest.raises(KubeUnreachable, match="Kubernetes API at http://127.0.0.1:\\d+ is unreachable"):
            call(env.backend("k8s-down"))
    assert time.monotonic() - started < 30
    assert env.ctx().ledger.history("k8s-down") == []


def test_forbidden_is_one_clear_error_and_changes_nothing(env):
    with pytest.raises(KubeForbidden, match='cannot get resource "deployments" in API group "apps"'):
        env.backend("k8s-locked").status()
    # Allowed to read, not to patch: the switch stops at the patch, nothing changes.
    env.k8s.forbidden[NS] = {"patch"}
    with pytest.raises(KubeForbidden, match="cannot patch"):
        env.backend().switch(NEW)
    env.k8s.forbidden.pop(NS)
    assert env.live_image() == env.image(OLD) and sorted(env.replicasets()) == [1]
    sw = env.ctx().ledger.history("k8s")[-1]
    assert sw.outcome == "failed" and "cannot patch" in sw.reason


def test_moved_registry_tag_is_refused(env):
    # the cpu overlay deploys the -cpu tag
    env.registry.tags[(REPO_NAME, f"{NEW}-cpu")] = digest_of("someone else's image")
    with pytest.raises(TamperError, match="moved to .*possible tampering"):
        env.backend().switch(NEW)
    assert env.patches() == [] and env.live_image() == env.image(OLD)


def test_hand_edited_deployment_shows_unknown_image_and_switch_still_works(env):
    env.kubectl("set", "image", f"deployment/{NAME}", "serving=127.0.0.1:5000/aads-ulora:hotfix")
    env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s")
    status = env.backend().status()
    assert status["live"]["version"] == "unknown image"
    assert status["live"]["image"] == "127.0.0.1:5000/aads-ulora:hotfix"
    assert any("unknown image" in d for d in status["drift"])
    assert env.backend().history()["entries"][-1]["version"] == "unknown image"
    result = env.backend().switch(NEW)
    assert result["outcome"] == "succeeded" and result["from_version"] is None
    assert env.backend().status()["live"]["version"] == NEW


def test_kubectl_rollout_undo_is_a_valid_way_back(env):
    """The fallback contract, with the real kubectl: after orchestrator switches, `kubectl rollout
    status|history|undo` work and the orchestrator sees what kubectl did."""
    env.backend().switch(NEW)
    env.backend().switch(THIRD)
    r = env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s")
    assert f'deployment "{NAME}" successfully rolled out' in r.stdout

    def same_story() -> list[tuple[int, str]]:
        ours = [(e["revision"], e["change_cause"] or "<none>") for e in env.backend().history()["entries"]
                if e["revision"] is not None]
        assert ours == env.kubectl_history()
        return ours

    assert same_story() == [(1, "kubectl apply -k k8s/overlays (initial manifests)"),
                            (2, f"orchestrator switch {NEW}"), (3, f"orchestrator switch {THIRD}")]
    # `--revision N` shows which version a revision runs: the pod template's annotation and image.
    r = env.kubectl("rollout", "history", f"deployment/{NAME}", "--revision=2")
    assert f"aads.version: {NEW}" in r.stdout and env.image(NEW) in r.stdout
    r = env.kubectl("rollout", "undo", f"deployment/{NAME}")
    assert "rolled back" in r.stdout
    env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s")
    status = env.backend().status()
    assert status["live"]["version"] == NEW and status["live"]["revision"] == 4
    assert any("changed outside the orchestrator" in d for d in status["drift"])
    assert same_story()[-1] == (4, f"orchestrator switch {NEW}")
    assert env.backend().history()["entries"][-1]["action"] == "undo"
    # kubectl --to-revision, then the orchestrator's own rollback, in either order.
    env.kubectl("rollout", "undo", f"deployment/{NAME}", "--to-revision=1")
    env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s")
    assert env.backend().status()["live"]["version"] == OLD
    assert env.backend().rollback()["to_version"] == NEW
    assert env.backend().rollback(THIRD)["to_version"] == THIRD
    assert env.live_image() == env.image(THIRD)
    same_story()
    # And after an orchestrator rollback, kubectl undo again returns to the version before it.
    env.kubectl("rollout", "undo", f"deployment/{NAME}")
    env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s")
    assert env.backend().status()["live"]["version"] == NEW


def test_revision_history_limit_bounds_what_undo_can_reach(env):
    env.kubectl("patch", f"deployment/{NAME}", "--type=merge", "-p", '{"spec":{"revisionHistoryLimit":1}}')
    b = env.backend()
    b.switch(NEW)
    b.switch(THIRD)
    env.k8s.wait_for(lambda: sorted(env.replicasets()) == [2, 3], what="cleanup of revision 1")
    assert [e["revision"] for e in env.backend().history()["entries"]] == [2, 3] == \
        [rev for rev, _ in env.kubectl_history()]
    with pytest.raises(UsageError, match=f"no kept revision .* runs {OLD} \\(revisions: 2={NEW}, 3={THIRD}\\)"):
        env.backend().rollback(OLD)
    assert env.backend().switch(OLD)["revision"] == 4  # a switch makes a new ReplicaSet instead


def test_kubectl_rollout_status_reports_the_deadline(env):
    env.kubectl("set", "image", f"deployment/{NAME}", f"serving={env.image(BROKEN)}")
    r = env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s", check=False)
    assert r.returncode != 0 and "exceeded its progress deadline" in r.stderr
    status = env.backend().status()
    assert status["live"]["health"] == "failed" and status["live"]["version"] == BROKEN
    # The orchestrator may switch away from a failed rollout (it is not "in progress").
    assert env.backend().switch(NEW)["outcome"] == "succeeded"


@pytest.mark.engine
def test_tamper_refusal_with_the_real_registry(env):
    """The tag check asks the real registry on 127.0.0.1:5000: a tag that no longer points at the
    recorded digest is refused before anything reaches the cluster."""
    try:
        requests.get("http://127.0.0.1:5000/v2/", timeout=2)
    except requests.RequestException:
        pytest.skip("no registry on 127.0.0.1:5000 (make engine starts one)")
    repo = f"aads-k8stest-{uuid.uuid4().hex[:8]}"
    # The target deploys the cpu overlay, so the push it checks is the cpu variant's `<version>-cpu`
    # (checking the other variant's push would let a moved tag through untested).
    tag = f"{NEW}-cpu"
    base = f"http://127.0.0.1:5000/v2/{repo}"
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "config": {}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    from tests.registries.local import local_registry_auth
    auth = local_registry_auth()  # engine.sh's registry asks for basic auth
    up = requests.post(f"{base}/blobs/uploads/", auth=auth, timeout=10)
    assert up.status_code == 202, up.text
    location = up.headers["Location"]
    sep = "&" if "?" in location else "?"
    put = requests.put(f"{location}{sep}digest={config_digest}", data=config, auth=auth, timeout=10,
                       headers={"Content-Type": "application/octet-stream"})
    assert put.status_code == 201, put.text
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "size": len(config), "digest": config_digest}, "layers": []}).encode()
    put = requests.put(f"{base}/manifests/{tag}", data=manifest, auth=auth, timeout=10,
                       headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
    assert put.status_code == 201, put.text
    real_digest = put.headers["Docker-Content-Digest"]
    try:
        ledger = env.ctx().ledger
        build = ledger.latest_build(NEW, "cpu")
        ledger.record_push(version=NEW, build_id=build.id, repository=f"127.0.0.1:5000/{repo}", tag=tag,
                           digest=digest_of("what we pushed back then"))
        with pytest.raises(TamperError, match=f"127.0.0.1:5000/{repo}:{tag} moved to {real_digest}"):
            env.backend().switch(NEW)
        assert env.patches() == []
        # The digest the registry really has passes the check.
        ledger.record_push(version=NEW, build_id=build.id, repository=f"127.0.0.1:5000/{repo}", tag=tag,
                           digest=real_digest)
        assert env.backend().switch(NEW)["digest"] == real_digest
        assert env.live_image() == f"{CLUSTER_REPO}@{real_digest}"  # pulled by the name the nodes know
    finally:
        requests.delete(f"{base}/manifests/{real_digest}", auth=auth, timeout=10)  # refused where deletes are disabled


def orchestrator(env: Env, *args: str) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run([sys.executable, "-m", "orchestrator", "--config", str(env.tmp / "orchestrator.yaml"), *args],
                          capture_output=True, text=True, timeout=120, cwd=env.tmp,
                          env={**os.environ, "COLUMNS": "250"})  # rich tables unfolded


def test_cli_verbs_on_a_kubernetes_target(env):
    r = orchestrator(env, "switch", NEW, "--target", "k8s", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["outcome"] == "succeeded" and res["revision"] == 2 and res["slot"] is None  # separate since schema 2
    assert "successfully rolled out" in r.stderr  # progress on stderr, JSON alone on stdout
    r = orchestrator(env, "status", "--target", "k8s")
    assert r.returncode == 0, r.stderr
    assert NEW in r.stdout and "revision 2" in r.stdout and "drift: none" in r.stdout
    r = orchestrator(env, "history", "--target", "k8s")
    assert r.returncode == 0, r.stderr
    assert f"orchestrator switch {NEW}" in r.stdout and "success rate: 100%" in r.stdout
    r = orchestrator(env, "rollback", "--to-version", OLD, "--target", "k8s", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["to_version"] == OLD
    h = json.loads(orchestrator(env, "history", "--target", "k8s", "--json").stdout)
    assert [(e["revision"], e["to_version"], e["live"]) for e in h["entries"]] == [(2, NEW, False), (3, OLD, True)]


@pytest.mark.parametrize("args, code, message", [
    (["status", "--target", "k8s-down"], 1, r"error: target k8s-down: the Kubernetes API at http://127\.0\.0\.1:\d+ "
                                           r"is unreachable \(\w+\); check the kubeconfig and context"),
    (["switch", NEW, "--target", "k8s-locked"], 1, r'error: target k8s-locked: the Kubernetes API refused to read '
                                                   r'deployment locked/aads-serving: .* is forbidden'),
    (["switch", NEW, "--target", "k8s-missing"], 2, r"error: target k8s-missing: deployment aads/nope not found"),
    (["switch", NEW, "--target", "nope"], 2, r"error: unknown target 'nope'"),
    (["switch", BROKEN, "--target", "k8s"], 5, r"error: switch to v5\.5\.5-broken on k8s failed: deployment "
                                               r"\"aads-serving\" exceeded its progress deadline .* rolled back to "
                                               r"v5\.5\.3-performance"),
    (["rollback", "--to-version", "v9.9.9-nope", "--target", "k8s"], 2, r"error: unknown version v9\.9\.9-nope"),
    (["rollback", "--target", "k8s"], 2, r"error: target k8s: nothing to roll back to"),
])
def test_cli_errors_are_one_line(env, args, code, message):
    r = orchestrator(env, *args)
    assert r.returncode == code, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert __import__("re").match(message, last), last
    assert "Traceback" not in r.stderr
    assert env.live_image() == env.image(OLD)


def test_a_killed_switch_is_closed_and_the_cluster_decides(env):
    """`kill -9` during the wait: the rollout goes on in the cluster; the next command closes the
    ledger record as interrupted and reads the truth from the cluster."""
    import signal
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "--config", str(env.tmp / "orchestrator.yaml"),
                             "switch", NEW, "--target", "k8s"], cwd=env.tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "AADS_PAUSE_AT_STEP": "rollout",
                                                            "AADS_PAUSE_SECONDS": "60"})
    try:
        ledger = Ledger(env.tmp / "state")
        env.k8s.wait_for(lambda: any(s.step == "rollout" for s in ledger.unfinished_switches("k8s")),
                         timeout=60, what="the switch to reach its rollout step")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s")
    assert env.backend().status()["live"]["version"] == NEW  # the patch was sent; the cluster finished it
    assert env.backend().rollback()["to_version"] == OLD
    first = env.ctx().ledger.history("k8s")[0]
    assert first.outcome == "interrupted" and "during step rollout" in first.reason
