"""TensorFlow multi-worker jobs across two namespace hosts, through ``train``.

Each host runs the real ``train`` with ``sagemaker_multi_worker_mirrored_strategy_enabled``;
the script trains a linear model for a few steps under MultiWorkerMirroredStrategy, each
worker on its own data, so identical final weights on both hosts prove the gradients
were all-reduced across them. A custom loop (``tf.Variable`` and ``strategy.run``, no
Keras): Keras 3's ``model.fit`` fails under MWMS (keras-team/keras#20585). The test's one
big cost is ``import tensorflow`` on each host (7-12 s here).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from smtk.launch import tensorflow
from tests.helpers.netns import HostRun, cluster

pytestmark = [pytest.mark.netns, pytest.mark.slow]

if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("needs tensorflow-cpu (the test extra)", allow_module_level=True)

MWMS_SCRIPT = r"""
import json, os
import tensorflow as tf

config = json.loads(os.environ["TF_CONFIG"])
index = config["task"]["index"]
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    # MEAN: an update made in replica context is averaged over every replica of every worker.
    w = tf.Variable(tf.zeros([4, 1]), aggregation=tf.VariableAggregation.MEAN)
    b = tf.Variable(0.0, aggregation=tf.VariableAggregation.MEAN)
true_w = tf.constant([[1.0], [-2.0], [3.0], [0.5]])

def step(x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(tf.matmul(x, w) + b - y))
    dw, db = tape.gradient(loss, [w, b])
    w.assign_sub(0.1 * dw)
    b.assign_sub(0.1 * db)
    return loss

@tf.function
def train_step(x, y):
    return strategy.run(step, args=(x, y))

for n in range(5):
    # every worker its own data: equal weights afterwards mean the updates were all-reduced
    x = tf.random.stateless_normal([16, 4], seed=[index, n])
    loss = train_step(x, tf.matmul(x, true_w) + 0.25)
    print(f"worker {index} step {n} loss {float(loss):.6f}", flush=True)
weights = [float(v) for v in tf.reshape(w, [-1]).numpy()] + [float(b.numpy())]
with open(os.path.join(os.environ["SM_MODEL_DIR"], "weights.json"), "w") as f:
    json.dump({"weights": weights, "tf_config": os.environ["TF_CONFIG"], "index": index}, f)
print("trained", weights, flush=True)
"""

HPS = {"sagemaker_program": "train.py", "sagemaker_multi_worker_mirrored_strategy_enabled": True}
SETTINGS = {"TF_CPP_MIN_LOG_LEVEL": "2", "SMTK_READY_TIMEOUT": "120"}


def _ok(runs: dict[str, HostRun]) -> None:
    for run in runs.values():
        assert run.exit_status == 0, f"{run.host} failed:\n{run.output[-4000:]}\n{run.failure()}"
        assert (run.root / "output" / "success").exists()


def test_mwms_two_hosts_same_weights(tmp_path: Path) -> None:
    hosts = ["algo-1", "algo-2"]
    with cluster(tmp_path, hosts, hyperparameters=HPS, code={"train.py": MWMS_SCRIPT}) as spaces:
        runs = spaces.run(SETTINGS, timeout=300)
    _ok(runs)
    results = {host: json.loads((runs[host].root / "model" / "weights.json").read_text()) for host in hosts}
    for index, host in enumerate(hosts):
        # TF_CONFIG as the TensorFlow toolkit writes it, this host's task
        expected = tensorflow.encode(tensorflow.mwms_config(hosts, host))
        assert results[host]["tf_config"] == expected
        assert json.loads(expected)["task"] == {"index": index, "type": "worker"}
        assert results[host]["index"] == index
        assert f"worker {index} step 4 loss" in runs[host].output
    first, second = (results[h]["weights"] for h in hosts)
    assert first == second, "the workers' weights differ: gradients were not all-reduced"
    assert any(abs(v) > 1e-3 for v in first), "no training happened"


PS_SCRIPT = r"""
import json, os, socket, time
import tensorflow as tf

tf.compat.v1.disable_eager_execution()
config = json.loads(os.environ["TF_CONFIG"])
task, cluster = config["task"], config["cluster"]
server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=task["type"], task_index=task["index"])

def accepts(address):
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False

if task["type"] == "master":
    # Wait until the other host's worker has come and gone: its parameter server must
    # still serve us (its train keeps it until this worker's port 2222 closes).
    worker = cluster["worker"][0]
    deadline = time.time() + 120
    while not accepts(worker) and time.time() < deadline:
        time.sleep(0.2)
    while accepts(worker) and time.time() < deadline:
        time.sleep(0.2)
    print("the other worker has ended", flush=True)
values = []
for i in range(len(cluster["ps"])):
    with tf.device(f"/job:ps/task:{i}"):  # computed on parameter server i
        values.append(tf.constant(float(i + 1)) * 21.0)
options = tf.compat.v1.ConfigProto(
    device_filters=["/job:ps", f"/job:{task['type']}/task:{task['index']}"], operation_timeout_in_ms=60000
)
with tf.compat.v1.Session(server.target, config=options) as session:
    results = session.run(values)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "ps.json"), "w") as f:
    json.dump({"results": [float(r) for r in results], "tf_config": os.environ["TF_CONFIG"]}, f)
print("parameter servers answered", results, flush=True)
"""

PS_HPS = {"sagemaker_program": "train.py", "sagemaker_parameter_server_enabled": True}


def test_parameter_servers_two_hosts(tmp_path: Path) -> None:
    hosts = ["algo-1", "algo-2"]
    with cluster(tmp_path, hosts, hyperparameters=PS_HPS, code={"train.py": PS_SCRIPT}) as spaces:
        runs = spaces.run(SETTINGS, timeout=300)
    _ok(runs)
    for host in hosts:
        result = json.loads((runs[host].root / "model" / "ps.json").read_text())
        assert result["tf_config"] == tensorflow.encode(tensorflow.ps_config(hosts, host))
        assert result["results"] == [21.0, 42.0]  # both hosts' parameter servers served
        assert "ps: parameter server ps:" in runs[host].output
    # algo-2's server outlived its own worker until the master's worker was done
    assert "the other worker has ended" in runs["algo-1"].output
    assert "algo-1:2222 closed: stopping the parameter server" in runs["algo-2"].output


MWMS_BROKEN_WORKER = r"""
import json, os, sys
import tensorflow as tf

index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
strategy = tf.distribute.MultiWorkerMirroredStrategy()
if index == 1:
    raise ValueError("worker 1 cannot read its shard")
with strategy.scope():
    total = tf.Variable(0.0, aggregation=tf.VariableAggregation.SUM)

@tf.function
def step():
    return strategy.run(lambda: total.assign_add(1.0))

step()  # waits for worker 1 for ever: only the other host's failure ends it
print("unreachable", flush=True)
"""


def test_mwms_a_failing_worker_stops_the_other_host_with_its_root_cause(tmp_path: Path) -> None:
    hosts = ["algo-1", "algo-2"]
    code = {"train.py": MWMS_BROKEN_WORKER}
    with cluster(tmp_path, hosts, hyperparameters=HPS, code=code) as spaces:
        runs = spaces.run({**SETTINGS, "SMTK_PEER_ABORT_GRACE": "5"}, timeout=240)
    for host in hosts:
        run = runs[host]
        assert run.exit_status not in (0, None), run.output[-4000:]
        failure = run.failure() or ""
        assert failure.startswith("ValueError: worker 1 cannot read its shard"), (host, failure)
        assert "where: host algo-2," in failure, (host, failure)
    assert "unreachable" not in runs["algo-1"].output
