"""The official Kubernetes Python client against a wharf cluster.

Run by tests/python_client.rs with KUBECONFIG, HELLO_IMAGE, TICKER_IMAGE and PORT set.
Each step prints `ok: STEP`; the first failure raises, and the Rust test shows the output.
The client's models are strict (required fields must be present), so every typed list and
read below also checks that wharf returns complete objects.
"""

import datetime
import os
import sys
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "default"
DEADLINE_S = 120


def step(name):
    print(f"ok: {name}", flush=True)


def until(what, check, timeout=DEADLINE_S):
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def deployment(name, image, port, replicas):
    labels = {"app": name}
    container = client.V1Container(
        name="hello",
        image=image,
        ports=[client.V1ContainerPort(container_port=port, name="http")],
        env=[client.V1EnvVar(name="GREETING", value="from python")],
        resources=client.V1ResourceRequirements(limits={"memory": "64Mi"}),
    )
    return client.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[container]),
            ),
        ),
    )


def main():
    config.load_kube_config(os.environ["KUBECONFIG"])
    core = client.CoreV1Api()
    apps = client.AppsV1Api()
    hello = os.environ["HELLO_IMAGE"]
    ticker = os.environ["TICKER_IMAGE"]
    port = int(os.environ["PORT"])
    name = "py-web"

    # Create, then a second create is 409 AlreadyExists.
    created = apps.create_namespaced_deployment(NS, deployment(name, hello, port, 2))
    assert created.metadata.uid, created
    try:
        apps.create_namespaced_deployment(NS, deployment(name, hello, port, 2))
        raise AssertionError("a second create succeeded")
    except ApiException as e:
        assert e.status == 409, e
        assert "already exists" in e.body, e.body
    step("create deployment, 409 on the second create")

    # Watch its pods until both run.
    running = set()
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_pod,
        NS,
        label_selector=f"app={name}",
        timeout_seconds=DEADLINE_S,
    ):
        pod = event["object"]
        if pod.status.phase == "Running":
            running.add(pod.metadata.name)
        else:
            running.discard(pod.metadata.name)
        if len(running) == 2:
            w.stop()
    assert len(running) == 2, f"pods running at the end of the watch: {running}"
    step("watch pods to Running")

    # Lists of every served kind deserialize into the strict models.
    pods = core.list_namespaced_pod(NS, label_selector=f"app={name}")
    assert {p.metadata.name for p in pods.items} == running
    for p in pods.items:
        assert p.status.pod_ip.startswith("127.64."), p.status
        assert p.status.container_statuses[0].ready is True
    core.list_pod_for_all_namespaces()
    core.list_node()
    core.list_namespace()
    core.list_service_for_all_namespaces()
    core.list_endpoints_for_all_namespaces()
    core.list_config_map_for_all_namespaces()
    core.list_secret_for_all_namespaces()
    core.list_event_for_all_namespaces()
    apps.list_deployment_for_all_namespaces()
    apps.list_replica_set_for_all_namespaces()
    apps.list_daemon_set_for_all_namespaces()
    client.BatchV1Api().list_job_for_all_namespaces()
    client.CoordinationV1Api().list_lease_for_all_namespaces()
    client.DiscoveryV1Api().list_endpoint_slice_for_all_namespaces()
    step("list every kind")

    # Timestamps as the client sends them (+00:00 offsets, microseconds).
    now = datetime.datetime.now(datetime.timezone.utc)
    lease = client.CoordinationV1Api().create_namespaced_lease(
        NS,
        client.V1Lease(
            metadata=client.V1ObjectMeta(name="py-lease"),
            spec=client.V1LeaseSpec(
                holder_identity="python", acquire_time=now, renew_time=now
            ),
        ),
    )
    assert lease.spec.renew_time is not None
    event = core.create_namespaced_event(
        NS,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(name="py-event"),
            involved_object=client.V1ObjectReference(kind="Pod", name="x", namespace=NS),
            reason="Testing",
            message="from python",
            type="Normal",
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        ),
    )
    assert event.last_timestamp is not None
    step("timestamps with +00:00 offsets")

    # Logs, and following them until the container ends.
    core.create_namespaced_pod(
        NS,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="py-ticker"),
            spec=client.V1PodSpec(
                restart_policy="Never",
                containers=[
                    client.V1Container(
                        name="ticker",
                        image=ticker,
                        env=[
                            client.V1EnvVar(name="TICKS", value="4"),
                            client.V1EnvVar(name="INTERVAL_MS", value="300"),
                        ],
                    )
                ],
            ),
        ),
    )
    until(
        "the ticker to start",
        lambda: core.read_namespaced_pod("py-ticker", NS).status.phase
        in ("Running", "Succeeded"),
    )
    followed = list(
        watch.Watch().stream(
            core.read_namespaced_pod_log, name="py-ticker", namespace=NS, follow=True
        )
    )
    assert followed[0] == "tick 1" and followed[-1] == "tick 4", followed
    logs = core.read_namespaced_pod_log("py-ticker", NS)
    assert logs.splitlines() == ["tick 1", "tick 2", "tick 3", "tick 4"], logs
    step("read logs, and follow them to the end")

    # The scale subresource.
    scale = apps.read_namespaced_deployment_scale(name, NS)
    assert scale.spec.replicas == 2 and scale.status.selector == f"app={name}", scale
    scale = apps.patch_namespaced_deployment_scale(name, NS, {"spec": {"replicas": 3}})
    assert scale.spec.replicas == 3, scale
    assert apps.read_namespaced_deployment(name, NS).spec.replicas == 3
    step("patch the scale")

    # A JSON patch.
    patched = apps.patch_namespaced_deployment(
        name,
        NS,
        [
            {"op": "add", "path": "/metadata/annotations", "value": {"team": "py"}},
            {"op": "replace", "path": "/spec/replicas", "value": 1},
        ],
    )
    assert patched.metadata.annotations == {"team": "py"}, patched.metadata
    assert patched.spec.replicas == 1
    step("JSON patch")

    # A watch from a resourceVersion the store no longer holds: 410 Gone. The cluster
    # keeps a short history (--watch-history), so a few dozen writes expire it.
    old = core.list_namespaced_config_map(NS).metadata.resource_version
    for i in range(60):
        core.create_namespaced_config_map(
            NS,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=f"py-cm-{i}"), data={"i": str(i)}
            ),
        )

    def gone():
        try:
            for _ in watch.Watch().stream(
                core.list_namespaced_config_map,
                NS,
                resource_version=old,
                timeout_seconds=1,
            ):
                return None  # still replayable: history not compacted yet
        except ApiException as e:
            assert e.status == 410, e
            return e
        return None

    expired = until("a 410 for an expired resourceVersion", gone)
    step(f"watch from an expired resourceVersion: {expired.status}")

    # Foreground deletion: the deployment goes only after its ReplicaSets and pods.
    apps.delete_namespaced_deployment(name, NS, propagation_policy="Foreground")
    marked = apps.read_namespaced_deployment(name, NS)
    assert marked.metadata.deletion_timestamp is not None
    assert "foregroundDeletion" in (marked.metadata.finalizers or [])

    def deployment_gone():
        try:
            apps.read_namespaced_deployment(name, NS)
            return False
        except ApiException as e:
            assert e.status == 404, e
            return True

    until("the deployment to be deleted", deployment_gone)
    left = core.list_namespaced_pod(NS, label_selector=f"app={name}").items
    assert left == [], [p.metadata.name for p in left]
    left = apps.list_namespaced_replica_set(NS, label_selector=f"app={name}").items
    assert left == [], [r.metadata.name for r in left]
    step("Foreground delete")

    print("python client: all steps passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
