"""The Kubernetes backend where a real cluster differs from a laptop (issue 12, points 3-10), each
against the API double that models the behaviour: re-applied manifests, cluster-visible images,
API errors during a rollout, stale deadlines, kept ReplicaSets, GPU pools, admission refusals,
and a Role with exactly the verbs the orchestrator uses.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from orchestrator.backends.kubernetes import rollout as kr
from orchestrator.errors import OrchestratorError, SwitchFailed, UsageError
from tests.integration.test_k8s_backend import (  # noqa: F401 - env is a fixture
    BROKEN, NAME, NEW, NS, OLD, PULL_SECRET, ROOT, THIRD, digest_of, env,
)
from tests.kubectl import kubectl

FAILED = "aads.failed"  # the annotation that marks a revision whose rollout failed


def rendered(overlay: str) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def deletes(env) -> list[dict]:
    return [r for r in env.k8s.requests if r["method"] == "DELETE"]


# ---- 3. re-applying the manifests does not revert a switch ----------------------------------
def reapply(env, kustomization_dir) -> subprocess.CompletedProcess:
    """`kubectl apply -k DIR` (client-side, as the docs say), for the one kind the double serves:
    the rendered Deployment goes through the real kubectl apply (three-way strategic merge)."""
    out = subprocess.run([kubectl(), "kustomize", str(kustomization_dir)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    (deployment,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    path = env.tmp / "reapply.yaml"
    path.write_text(yaml.safe_dump(deployment))
    return env.kubectl("apply", "-f", str(path), "--validate=false")


def test_reapplying_the_manifests_keeps_what_the_switch_made_live(env, tmp_path):
    env.backend().switch(NEW)
    before = env.deployment()
    pinned = env.tmp / "state" / "k8s" / "k8s"
    assert (pinned / "kustomization.yaml").is_file(), "the switch writes the manifests to re-apply"
    out = reapply(env, pinned)
    assert "deployment.apps/aads-serving" in out.stdout
    after = env.deployment()
    assert after["spec"]["template"] == before["spec"]["template"]
    # (The fixture's test-only minReadySeconds/progressDeadlineSeconds go back to the manifests'
    # values: a spec change, not a rollout. The pod template, hence what runs, is untouched.)
    env.k8s.wait_for(lambda: env.deployment()["status"].get("observedGeneration") == env.deployment()["metadata"]["generation"],
                     what="re-apply observed")
    assert after["metadata"]["annotations"][kr.CHANGE_CAUSE] == f"orchestrator switch {NEW}"
    assert env.live_image() == env.image(NEW) and sorted(env.replicasets()) == [1, 2]
    # And once more after a rollback: the pin follows what is live.
    env.backend().rollback()
    reapply(env, pinned)
    assert env.live_image() == env.image(OLD) and env.backend().status()["live"]["version"] == OLD


# ---- 4. a cluster-visible repository and its pull secret ------------------------------------
def test_switch_deploys_the_cluster_visible_repository_with_its_pull_secret(env):
    env.backend().switch(NEW)
    pod = env.deployment()["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == env.image(NEW) and env.image(NEW).startswith("registry.aads.test:5000/")
    assert {"name": PULL_SECRET} in pod["imagePullSecrets"]


def test_a_loopback_repository_is_refused_before_anything_changes(env):
    cfg = yaml.safe_load((env.tmp / "orchestrator.yaml").read_text())
    loopback = {**cfg["targets"]["k8s"]}
    loopback.pop("repository")  # falls back to the push repository: 127.0.0.1:<port>/aads-ulora
    cfg["targets"]["k8s-loopback"] = loopback
    (env.tmp / "orchestrator.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UsageError, match="loopback.*nodes cannot pull.*set `repository:`"):
        env.backend("k8s-loopback").switch(NEW)
    assert env.patches() == [] and env.live_image() == env.image(OLD)


# ---- 5. transient API errors are retried; only a deadline or the timeout undoes ---------------
def test_a_503_on_the_watch_does_not_undo_a_healthy_rollout(env):
    fault = env.k8s.fail(503, verbs={"watch"}, times=2)
    result = env.backend().switch(NEW)
    assert fault.served == 2
    assert result["outcome"] == "succeeded" and env.live_image() == env.image(NEW)
    assert [p["content_type"] for p in env.patches()] == ["application/strategic-merge-patch+json"]
    assert digest_of(NEW) not in env.ctx().ledger.failed_digests()


def test_a_409_on_the_patch_is_retried_after_reading_again(env):
    fault = env.k8s.fail(409, verbs={"patch"}, times=1)
    result = env.backend().switch(NEW)
    assert fault.served == 1 and result["outcome"] == "succeeded"
    assert env.live_image() == env.image(NEW) and len(env.patches()) == 2


def test_an_unreachable_api_during_the_rollout_reports_unknown_and_changes_nothing(env):
    # Every read after the patch fails: the switch cannot know how the rollout went.
    env.k8s.fail(503, verbs={"watch", "get", "list"}, times=10**6, after="patch")
    with pytest.raises(OrchestratorError, match="unknown.*`orchestrator status --target k8s-impatient`") as err:
        env.backend("k8s-impatient").switch(NEW)
    assert not isinstance(err.value, SwitchFailed)
    env.k8s.faults.clear()
    assert len(env.patches()) == 1  # no undo was sent
    sw = env.ctx().ledger.history("k8s-impatient")[-1]
    assert sw.outcome == "unknown"
    assert digest_of(NEW) not in env.ctx().ledger.failed_digests()
    env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s")
    assert env.live_image() == env.image(NEW)


# ---- 6. a stale ProgressDeadlineExceeded does not fail the undo ------------------------------
def test_undo_with_one_replica_ignores_the_deadline_of_the_failed_replicaset(env):
    env.kubectl("patch", f"deployment/{NAME}", "--type=merge", "-p", '{"spec":{"replicas":1}}')
    env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s")
    env.backend().switch(NEW)
    with pytest.raises(SwitchFailed) as err:
        env.backend().switch(BROKEN)
    message = str(err.value)
    assert "undo failed too" not in message and f"rolled back to {NEW}" in message, message
    rss = env.replicasets()
    live_rev = max(rss)
    assert rss[live_rev]["spec"]["template"]["spec"]["containers"][0]["image"] == env.image(NEW)
    # The numbers printed are those after the undo (revision 2's template came back as 4).
    assert f"now revision {live_rev}" in message and live_rev == 4, message
    assert env.live_image() == env.image(NEW)


# ---- 7. ReplicaSets are never deleted; a failed revision is marked and skipped ---------------
def test_a_failed_revision_is_kept_marked_and_skipped_by_rollback(env):
    env.backend().switch(NEW)
    with pytest.raises(SwitchFailed):
        env.backend().switch(BROKEN)
    assert deletes(env) == []
    rss = env.replicasets()
    assert sorted(rss) == [1, 3, 4]
    assert FAILED in rss[3]["metadata"]["annotations"]
    assert "FAILED" in rss[3]["metadata"]["annotations"][kr.CHANGE_CAUSE]  # kubectl rollout history shows it
    history = dict(env.kubectl_history())
    assert history[3].startswith("FAILED")
    # `orchestrator rollback` goes to the revision before the live one that did not fail.
    result = env.backend().rollback()
    assert result["to_version"] == OLD and env.live_image() == env.image(OLD)
    # A later switch does not carry the mark onto its own revision.
    env.backend().switch(THIRD)
    newest = env.replicasets()[max(env.replicasets())]
    assert FAILED not in newest["metadata"]["annotations"]


def test_the_automatic_undo_returns_to_the_newest_fully_available_revision(env):
    env.backend().switch(NEW)
    env.kubectl("set", "image", f"deployment/{NAME}", f"serving={env.image(BROKEN)}")  # by hand: fails
    r = env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s", check=False)
    assert "exceeded its progress deadline" in r.stderr
    env.k8s.mark_bad(env.image(THIRD))
    with pytest.raises(SwitchFailed, match=f"rolled back to {NEW}") as err:
        env.backend().switch(THIRD)  # fails too; the undo must not go back to the hand-set BROKEN
    assert "undo failed too" not in str(err.value)
    assert env.live_image() == env.image(NEW)
    assert deletes(env) == []


def test_a_paused_deployment_is_refused_by_switch_and_rollback(env):
    env.backend().switch(NEW)
    env.kubectl("rollout", "pause", f"deployment/{NAME}")
    for call in (lambda b: b.switch(OLD), lambda b: b.rollback()):
        with pytest.raises(OrchestratorError, match="is paused; resume it first"):
            call(env.backend())
    assert len(env.patches()) == 2  # the switch, then kubectl's pause


def test_a_deployment_paused_during_the_rollout_is_not_undone(env):
    """kubectl refuses to undo a paused Deployment; so does the automatic undo, and says how on."""
    import threading

    cfg = yaml.safe_load((env.tmp / "orchestrator.yaml").read_text())
    cfg["targets"]["k8s-6s"] = {**cfg["targets"]["k8s"], "timeout_s": 6}
    (env.tmp / "orchestrator.yaml").write_text(yaml.safe_dump(cfg))
    outcome: list[BaseException] = []

    def switch() -> None:
        try:
            env.backend("k8s-6s").switch(BROKEN)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    t = threading.Thread(target=switch)
    t.start()
    env.k8s.wait_for(lambda: len(env.patches()) == 1, what="the switch's patch")
    env.kubectl("rollout", "pause", f"deployment/{NAME}")
    t.join(60)
    (err,) = outcome
    assert isinstance(err, SwitchFailed) and "paused" in str(err) and "kubectl rollout resume" in str(err), err
    assert [p["content_type"] for p in env.patches()].count("application/json-patch+json") == 0
    assert env.deployment()["spec"]["paused"] is True


# ---- 8. GPU pools and time budgets -----------------------------------------------------------
def gpu_deployment(env, *, gpus: int, replicas: int = 2) -> None:
    """Replace the fixture's Deployment with the GPU overlay's, on a pool of `gpus` GPUs."""
    d = next(x for x in rendered("gpu") if x["kind"] == "Deployment")
    d["metadata"]["namespace"] = NS
    d["spec"].update(replicas=replicas, minReadySeconds=0, progressDeadlineSeconds=3)
    d["spec"]["template"]["spec"]["containers"][0]["image"] = env.image(OLD)
    env.k8s.store.delete("deployments", NS, NAME)
    env.k8s.wait_for(lambda: not env.k8s.list("pods", NS), what="old pods gone")
    env.k8s.cluster.gpus = gpus
    env.k8s.create("deployments", d)
    env.k8s.wait_for(lambda: env.deployment().get("status", {}).get("availableReplicas") == replicas,
                     what="GPU rollout")


def test_the_gpu_overlay_switches_on_a_full_pool(env):
    gpu_deployment(env, gpus=2)
    result = env.backend().switch(NEW)
    assert result["outcome"] == "succeeded" and env.live_image() == env.image(NEW)


def test_a_surge_on_a_full_gpu_pool_fails_naming_unschedulable(env):
    gpu_deployment(env, gpus=2)
    env.kubectl("patch", f"deployment/{NAME}", "--type=merge", "-p",
                '{"spec":{"strategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}}}')
    with pytest.raises(SwitchFailed, match="Unschedulable.*Insufficient nvidia.com/gpu"):
        env.backend().switch(NEW)
    assert env.live_image() == env.image(OLD)


def test_pods_refused_by_admission_are_named_in_the_failure(env):
    why = ('pods "aads-serving-x" is forbidden: violates PodSecurity "restricted:latest": '
           'allowPrivilegeEscalation != false')
    env.k8s.cluster.rejected_images[env.image(THIRD)] = why
    with pytest.raises(SwitchFailed, match="ReplicaFailure.*violates PodSecurity"):
        env.backend().switch(THIRD)
    assert env.live_image() == env.image(OLD)


def test_partial_progress_with_two_replicas_is_undone_at_the_deadline(env):
    env.k8s.cluster.ready_limit[env.image(THIRD)] = 1  # one new pod turns Ready, the second never
    with pytest.raises(SwitchFailed, match="exceeded its progress deadline.*rolled back to"):
        env.backend().switch(THIRD)
    assert env.live_image() == env.image(OLD)
    env.k8s.wait_for(lambda: {p["spec"]["containers"][0]["image"] for p in env.k8s.list("pods", NS)}
                     == {env.image(OLD)}, what="THIRD pods gone")


# ---- 9. the orchestrator's Role: exactly the verbs it uses ----------------------------------
def role_rules() -> dict[str, set[str]]:
    r = subprocess.run([sys.executable, "-m", "orchestrator", "k8s-role"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    return {res: set(rule["verbs"]) for rule in role["rules"] for res in rule["resources"]}


def test_the_role_grants_exactly_what_switch_rollback_status_repair_and_history_use(env):
    rules = role_rules()
    env.k8s.grant(rules)
    env.backend().switch(NEW)
    with pytest.raises(SwitchFailed):
        env.backend().switch(BROKEN)
    env.backend().rollback()
    env.backend().status()
    env.backend().repair()
    env.backend().history()
    used: dict[str, set[str]] = {}
    from tests.k8s_double.server import verb_of

    for req in env.k8s.requests:
        parts = req["path"].strip("/").split("/")
        if "namespaces" not in parts or len(parts) < parts.index("namespaces") + 3:
            continue
        resource = parts[parts.index("namespaces") + 2]
        name = parts[parts.index("namespaces") + 3] if len(parts) > parts.index("namespaces") + 3 else None
        used.setdefault(resource, set()).add(verb_of(req["method"], name, req["query"]))
    assert used == rules, f"used {used}, granted {rules}"
    # And the Role in k8s/ is the one the command prints.
    shipped = [d for d in yaml.safe_load_all((ROOT / "k8s" / "rbac" / "orchestrator.yaml").read_text()) if d]
    (role,) = [d for d in shipped if d["kind"] == "Role"]
    assert {res: set(rule["verbs"]) for rule in role["rules"] for res in rule["resources"]} == rules
