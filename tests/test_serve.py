"""Policy server on loopback: openpi's wire format, per-connection state, every bad input answered, limits, clients."""

from __future__ import annotations

import http.client
import threading
import time

import msgpack
import numpy as np
import pytest
import websockets
import websockets.sync.client

from repwam.errors import RepwamError
from repwam.serve import ENV_STATE_KEY, STATE_KEY, ProtocolError, validate_observation
from repwam.serve.client import WebsocketPolicy
from repwam.serve.msgpack_numpy import packb, unpackb
from repwam.serve.server import PolicyServer, ServeLimits, checkpoint_policy_factory

META = {"camera_keys": ["front"], "image_size": 8, "state_dim": 3, "action_dim": 2, "action_horizon": 4,
        "instruction_key": "prompt"}
IMAGE = "observation.images.front"
LIMITS = ServeLimits(max_message_bytes=64 * 1024, max_prompt_chars=100, max_requests_per_s=None)
TIMEOUT = 10


class EchoPolicy:
    """actions[:, 0] = state[0] + 100 * (infers this episode), actions[:, 1:] = mean of the first camera.

    The prompt steers it: "sleep S" sleeps S seconds per infer, "boom" raises."""

    def __init__(self, metadata=META):
        self.metadata = dict(metadata)
        self.prompt, self.steps = None, 0

    def reset(self, instruction):
        self.prompt, self.steps = instruction, 0

    def infer(self, obs):
        if self.prompt.startswith("sleep "):
            time.sleep(float(self.prompt.split()[1]))
        if self.prompt == "boom":
            raise RuntimeError("policy exploded")
        if self.prompt == "junk":
            return {"actions": np.zeros((1, self.metadata["action_dim"]), np.float32), "junk": object()}
        self.steps += 1
        first = next(k for k in obs if k.startswith("observation.images."))
        a = np.empty((self.metadata["action_horizon"], self.metadata["action_dim"]), np.float32)
        a[:, 0] = obs[STATE_KEY][0] + 100 * self.steps
        a[:, 1:] = obs[first].mean()
        return {"actions": a, "prompt": self.prompt, "steps": self.steps}


def _obs(state0=1.0, fill=7, prompt=None, **extra):
    obs = {IMAGE: np.full((8, 8, 3), fill, np.uint8), STATE_KEY: np.array([state0, 0, 0], np.float32)}
    if prompt is not None:
        obs["prompt"] = prompt
    return {**obs, **extra}


@pytest.fixture(scope="module")
def server():
    with PolicyServer(EchoPolicy, "127.0.0.1", 0, limits=LIMITS).start() as s:
        yield s


def _raw(url):
    """An openpi-style connection: compression off, no size limit, metadata read first."""
    ws = websockets.sync.client.connect(url, compression=None, max_size=None, open_timeout=TIMEOUT)
    return ws, unpackb(ws.recv(timeout=TIMEOUT))


def _refused(ws, fragment, code=1011):
    text = ws.recv(timeout=TIMEOUT)
    assert isinstance(text, str) and fragment in text, text
    with pytest.raises(websockets.ConnectionClosed):
        ws.recv(timeout=TIMEOUT)
    assert ws.close_code == code


def _serves(url, state0=5.0):
    with WebsocketPolicy(url) as p:
        p.reset("check")
        out = p.infer(_obs(state0))
    assert out["actions"][0, 0] == state0 + 100


def _idle(server):
    deadline = time.monotonic() + TIMEOUT
    while server._connections and time.monotonic() < deadline:
        time.sleep(0.02)
    return server._connections == 0


# ------------------------------------------------------------------ wire format

# openpi-client 0.1.2's msgpack_numpy.packb of OPENPI_SAMPLE, byte for byte (its marker keys are msgpack bin)
OPENPI_HEX = (
    "86b16f62736572766174696f6e2f696d61676584c40b5f5f6e6461727261795f5fc3c40464617461c40c000102030405060708090a0bc405"
    "6474797065a37c7531c405736861706593020203b16f62736572766174696f6e2f737461746584c40b5f5f6e6461727261795f5fc3c40464"
    "617461c4080000003f000080bfc4056474797065a33c6634c40573686170659102a670726f6d7074a47069636ba47374657083c40d5f5f6e"
    "7067656e657269635f5fc3c4046461746103c4056474797065a33c6938a4666c616783c40d5f5f6e7067656e657269635f5fc3c404646174"
    "61c3c4056474797065a37c6231a178cb4004000000000000")
OPENPI_SAMPLE = {"observation/image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3),
                 "observation/state": np.array([0.5, -1.0], np.float32), "prompt": "pick",
                 "step": np.int64(3), "flag": np.bool_(True), "x": np.float64(2.5)}


def test_msgpack_is_byte_compatible_with_openpi():
    assert packb(OPENPI_SAMPLE) == bytes.fromhex(OPENPI_HEX)
    back = unpackb(bytes.fromhex(OPENPI_HEX))
    assert back.keys() == OPENPI_SAMPLE.keys()
    for k, v in OPENPI_SAMPLE.items():
        assert type(back[k]) is type(v) or isinstance(v, np.float64) and back[k] == v
        np.testing.assert_array_equal(back[k], v)
    a = np.asfortranarray(np.arange(6, dtype="<i2").reshape(2, 3))[:, ::2]  # non-contiguous goes as C order
    np.testing.assert_array_equal(unpackb(packb({"a": a}))["a"], a)


def _header(data=b"\0" * 8, dtype="<f4", shape=(2,), **extra):
    return msgpack.packb({b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": list(shape), **extra})


@pytest.mark.parametrize("value", [np.array([None], object), np.zeros(2, np.complex64), np.zeros(2, "V4"),
                                   np.complex128(1j), {"x": object()}, {"t": {1, 2}}])
def test_msgpack_refuses_to_encode(value):
    with pytest.raises(ProtocolError):
        packb(value)


@pytest.mark.parametrize("payload, fragment", [
    (_header(dtype="|O"), "object"),
    (_header(dtype="<c8", data=b"\0" * 16), "complex"),
    (_header(dtype="|V4"), "void"),
    (_header(dtype="i4,f4"), "void"),
    (_header(dtype=["<f4"]), "must be a string"),
    (_header(dtype="not-a-dtype"), "not a numpy dtype"),
    (_header(shape=(3,)), "carries 8 bytes"),
    (_header(shape=(1,)), "carries 8 bytes"),
    (_header(shape=(-2,)), "non-negative"),
    (_header(shape=(True, 2)), "non-negative"),
    (_header(data="text"), "bytes"),
    (_header(extra_key=1), "exactly the keys"),
    (msgpack.packb({b"__npgeneric__": True, b"data": [1], b"dtype": "<f4"}), "bool, number or string"),
    (msgpack.packb({b"__npgeneric__": True, b"data": 1, b"dtype": "<c16"}), "complex"),
    (msgpack.packb({"a": msgpack.ExtType(5, b"x")}), "extension type 5"),
    (msgpack.packb([msgpack.Timestamp(1, 0)]), "extension type -1"),
    (msgpack.packb(msgpack.Timestamp(1, 0)), "extension type -1"),
    (b"\xc1", "not a valid msgpack"),
    (msgpack.packb({"a": 1}) + b"\x01", "not a valid msgpack"),
    (b"\x91" * 5000 + b"\x01", "not a valid msgpack"),
    (b"", "not a valid msgpack"),
])
def test_msgpack_refuses_to_decode(payload, fragment):
    with pytest.raises(ProtocolError, match=fragment):
        unpackb(payload)


def test_msgpack_accepts_str_marker_keys_and_gives_read_only_arrays():
    a = unpackb(msgpack.packb({"__ndarray__": True, "data": b"\1\0\2\0", "dtype": "<u2", "shape": [2]}))
    np.testing.assert_array_equal(a, [1, 2])
    assert not a.flags.writeable


def test_validate_observation():
    out = validate_observation(_obs(prompt="go", **{STATE_KEY: np.array([1, 2, 3], np.float64)}), META)
    assert out[STATE_KEY].dtype == np.float32 and out["prompt"] == "go"
    full = {**META, "camera_keys": [IMAGE], "image_size": [8, 8]}
    assert validate_observation(_obs(), full).keys() == {IMAGE, STATE_KEY}
    with pytest.raises(ProtocolError, match="missing 'observation.images.front'.*unknown 'x'"):
        validate_observation({STATE_KEY: np.zeros(3, np.float32), "x": 1}, META)


def test_validate_observation_follows_the_metadata():
    resizing = {**META, "max_image_size": 32}  # a policy that resizes any frame up to 32 pixels a side itself
    assert validate_observation({**_obs(), IMAGE: np.zeros((20, 30, 3), np.uint8)}, resizing)[IMAGE].shape == (20, 30, 3)
    with pytest.raises(ProtocolError, match="1 to 32 pixels"):
        validate_observation({**_obs(), IMAGE: np.zeros((33, 8, 3), np.uint8)}, resizing)
    with pytest.raises(ProtocolError, match=r"\(H, W, 3\)"):
        validate_observation({**_obs(), IMAGE: np.zeros((8, 8), np.uint8)}, resizing)
    image_only = {**META, "state_dim": 0}
    assert validate_observation({IMAGE: _obs()[IMAGE]}, image_only).keys() == {IMAGE}
    # a policy without a state input (a WAM adapted with --no-use-state) takes the robot's state and ignores it
    assert validate_observation(_obs(**{STATE_KEY: np.zeros(4, np.float32)}), image_only)[STATE_KEY].shape == (4,)
    with pytest.raises(ProtocolError, match="non-finite"):
        validate_observation(_obs(**{STATE_KEY: np.full(4, np.nan, np.float32)}), image_only)
    privileged = {**META, "privileged": True}
    with pytest.raises(ProtocolError, match="missing 'observation.environment_state'"):
        validate_observation(_obs(), privileged)
    env = validate_observation(_obs(**{ENV_STATE_KEY: np.zeros(39)}), privileged)[ENV_STATE_KEY]
    assert env.dtype == np.float32 and env.shape == (39,)
    with pytest.raises(ProtocolError, match="non-finite"):
        validate_observation(_obs(**{ENV_STATE_KEY: np.full(39, np.nan)}), privileged)


# ------------------------------------------------------------------ serving


def test_healthz(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    assert (r.status, r.read()) == (200, b"OK\n")


def test_metadata_reset_and_round_trip(server):
    with WebsocketPolicy(server.url) as p:
        m = p.metadata
        assert m["protocol_version"] == 1 and m["image_keys"] == [IMAGE] and m["image_size"] == [8, 8]
        assert (m["state_dim"], m["action_dim"], m["action_horizon"], m["instruction_key"]) == (3, 2, 4, "prompt")
        assert m["limits"]["max_message_bytes"] == LIMITS.max_message_bytes
        p.reset("open the drawer")
        first = p.infer(_obs(1.5, fill=9))
        assert first["actions"].dtype == np.float32 and first["actions"].shape == (4, 2)
        np.testing.assert_array_equal(first["actions"][:, 0], 101.5)
        np.testing.assert_array_equal(first["actions"][:, 1], 9)
        assert first["prompt"] == "open the drawer" and "prev_total_ms" not in first["server_timing"]
        second = p.infer(_obs(1.5))
        assert second["steps"] == 2 and second["server_timing"]["prev_total_ms"] >= first["server_timing"]["infer_ms"]
        p.reset("open the drawer")  # the same task again: a new episode all the same
        assert p.infer(_obs(0.0))["steps"] == 1


def test_openpi_style_client_without_reset(server):
    """openpi clients send the prompt in every observation and never reset: a new prompt starts a new episode."""
    ws, meta = _raw(server.url)
    with ws:
        assert meta["camera_keys"] == ["front"]
        for prompt, steps in (("a", 1), ("a", 2), ("b", 1)):
            ws.send(packb(_obs(prompt=prompt)))
            reply = unpackb(ws.recv(timeout=TIMEOUT))
            assert (reply["prompt"], reply["steps"]) == (prompt, steps)
        ws.send(packb({"reset": True, "prompt": "c"}))
        assert unpackb(ws.recv(timeout=TIMEOUT)) == {"reset": True, "episode": 3}


def test_two_clients_keep_separate_state(server):
    a, b = WebsocketPolicy(server.url), WebsocketPolicy(server.url)
    with a, b:
        a.reset("task a")
        b.reset("task b")
        for _ in range(3):
            a.infer(_obs())
        rb = b.infer(_obs(2.0))
        ra = a.infer(_obs())
        assert (ra["prompt"], ra["steps"], rb["prompt"], rb["steps"]) == ("task a", 4, "task b", 1)

        results = {}

        def run(name, policy, n):
            for _ in range(n):
                results[name] = policy.infer(_obs())["steps"]

        threads = [threading.Thread(target=run, args=("a", a, 20)), threading.Thread(target=run, args=("b", b, 10))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert results == {"a": 24, "b": 11}


BAD = {
    "missing key": (packb({IMAGE: np.zeros((8, 8, 3), np.uint8), "prompt": "x"}), "missing 'observation.state'"),
    "unknown key": (packb(_obs(prompt="x", extra=np.zeros(1))), "unknown 'extra'"),
    "path as a key": (packb(_obs(prompt="x", **{"observation.images.../../etc/passwd": "/etc/passwd"})), "unknown"),
    "image shape": (packb({**_obs(prompt="x"), IMAGE: np.zeros((8, 9, 3), np.uint8)}), "uint8 array (8, 8, 3)"),
    "image dtype": (packb({**_obs(prompt="x"), IMAGE: np.zeros((8, 8, 3), np.float32)}), "got float32"),
    "image as bytes": (packb({**_obs(prompt="x"), IMAGE: b"\0" * 192}), "got bytes"),
    "nan state": (packb(_obs(np.nan, prompt="x")), "non-finite values at [0]"),
    "inf state": (packb({**_obs(prompt="x"), STATE_KEY: np.array([0, 0, np.inf], np.float32)}), "non-finite"),
    "state dtype": (packb({**_obs(prompt="x"), STATE_KEY: np.zeros(3, np.int32)}), "float array (3,)"),
    "empty prompt": (packb(_obs(prompt="  ")), "'prompt' is empty"),
    "enormous prompt": (packb(_obs(prompt="x" * 5000)), "limit is 100"),
    "prompt not str": (packb(_obs(prompt=b"bytes")), "must be a string"),
    "no prompt, no reset": (packb(_obs()), "no episode started"),
    "not msgpack": (b"\xc1\xc1 not msgpack", "not a valid msgpack"),
    "not a map": (packb([1, 2, 3]), "must be a msgpack map"),
    "extension type": (msgpack.packb({"a": msgpack.ExtType(42, b"pickle?")}), "extension type 42"),
    "shape/data mismatch": (msgpack.packb({IMAGE: {b"__ndarray__": True, b"data": b"\0" * 10, b"dtype": "|u1",
                                                   b"shape": [8, 8, 3]}}), "carries 10 bytes"),
    "object dtype": (msgpack.packb({IMAGE: {b"__ndarray__": True, b"data": b"\x80\x04N.", b"dtype": "|O",
                                            b"shape": [1]}}), "object"),
    "text frame": ("hello", "text frames"),
    "reset false": (packb({"reset": False, "prompt": "x"}), "a reset is exactly"),
    "reset extra key": (packb({"reset": True, "prompt": "x", "cmd": "rm"}), "a reset is exactly"),
    "reset empty prompt": (packb({"reset": True, "prompt": ""}), "'prompt' is empty"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_error_and_1011_and_server_goes_on(server, name):
    payload, fragment = BAD[name]
    other = WebsocketPolicy(server.url)  # a bystander connected throughout
    other.reset("bystander")
    ws, _ = _raw(server.url)
    with ws:
        ws.send(payload)
        _refused(ws, fragment)
    assert other.infer(_obs(3.0))["actions"][0, 0] == 103.0
    other.close()
    _serves(server.url)


def test_policy_exception_sends_traceback_and_1011(server):
    ws, _ = _raw(server.url)
    with ws:
        ws.send(packb({"reset": True, "prompt": "boom"}))
        assert unpackb(ws.recv(timeout=TIMEOUT))["reset"] is True
        ws.send(packb(_obs()))
        _refused(ws, "RuntimeError: policy exploded")
    with WebsocketPolicy(server.url) as p:
        p.reset("boom")
        with pytest.raises(RepwamError, match="policy exploded"):
            p.infer(_obs())
    _serves(server.url)


def test_unpackable_policy_output_is_a_server_error(server):
    with WebsocketPolicy(server.url) as p:
        p.reset("junk")
        with pytest.raises(RepwamError, match="(?s)Traceback.*policy.infer returned something the wire cannot carry"):
            p.infer(_obs())
    _serves(server.url)


def test_client_drops_keys_the_server_does_not_take(server):
    with WebsocketPolicy(server.url) as p:
        p.reset("privileged state is the harness's, not this policy's")
        assert p.infer(_obs(**{ENV_STATE_KEY: np.zeros(39)}))["steps"] == 1


def test_frame_over_max_size_closes_1009(server):
    ws, _ = _raw(server.url)
    with ws:
        try:
            ws.send(b"\0" * (10 * LIMITS.max_message_bytes))
        except websockets.ConnectionClosed:
            pass
        with pytest.raises(websockets.ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
        assert ws.close_code == 1009
    _serves(server.url)


def test_client_gone_mid_request(server):
    ws, _ = _raw(server.url)
    ws.send(packb({"reset": True, "prompt": "sleep 0.5"}))
    ws.recv(timeout=TIMEOUT)
    ws.send(packb(_obs()))
    ws.close()  # while the policy works on the request
    _serves(server.url)
    time.sleep(0.6)  # the answer to the gone client has failed by now
    _serves(server.url)
    assert _idle(server)


def test_slow_client_does_not_block_fast_one(server):
    slow = WebsocketPolicy(server.url)
    slow.reset("sleep 2.0")
    t = threading.Thread(target=slow.infer, args=(_obs(),))
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    with WebsocketPolicy(server.url) as fast:
        fast.reset("fast")
        for i in range(5):
            assert fast.infer(_obs())["steps"] == i + 1
    assert t.is_alive() and time.monotonic() - t0 < 1.5
    t.join(TIMEOUT)
    slow.close()


def test_flood_is_throttled_per_connection_and_connections_are_capped():
    limits = ServeLimits(max_message_bytes=64 * 1024, max_requests_per_s=20, burst=2, max_connections=2)
    with PolicyServer(EchoPolicy, "127.0.0.1", 0, limits=limits).start() as server:
        flood, _ = _raw(server.url)
        with flood, WebsocketPolicy(server.url) as calm:
            calm.reset("calm")
            t0 = time.monotonic()
            for _ in range(30):  # pipelined, never waiting for an answer
                flood.send(packb(_obs(prompt="flood")))
            t1 = time.monotonic()
            assert calm.infer(_obs())["steps"] == 1  # the other connection has its own budget
            assert time.monotonic() - t1 < 1.0
            with pytest.raises(websockets.InvalidStatus, match="503"):
                websockets.sync.client.connect(server.url, open_timeout=TIMEOUT)
            steps = [unpackb(flood.recv(timeout=TIMEOUT))["steps"] for _ in range(30)]
            assert steps == list(range(1, 31))  # every request answered, in order
            assert time.monotonic() - t0 >= (30 - limits.burst) / limits.max_requests_per_s * 0.9
        assert _idle(server)


def test_idle_connection_is_closed():
    with PolicyServer(EchoPolicy, "127.0.0.1", 0, limits=ServeLimits(max_idle_s=0.3)).start() as server:
        ws, _ = _raw(server.url)
        with ws:
            with pytest.raises(websockets.ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
            assert ws.close_code == 1000
        assert _idle(server)
        _serves(server.url)


def test_checkpoint_factory(tmp_path, monkeypatch):
    import repwam.policy

    with pytest.raises(RepwamError):
        checkpoint_policy_factory(tmp_path / "missing")
    loads = []

    class Forkable(EchoPolicy):
        def fork(self):
            return Forkable(self.metadata)

    def load(path, cls):
        loads.append(path)
        return cls()

    monkeypatch.setattr(repwam.policy, "load_policy", lambda path: load(path, Forkable), raising=False)
    make, meta = checkpoint_policy_factory(tmp_path)
    a, b = make(), make()
    assert meta == META and a is not b and isinstance(a, Forkable) and len(loads) == 1
    monkeypatch.setattr(repwam.policy, "load_policy", lambda path: load(path, EchoPolicy), raising=False)
    make, _ = checkpoint_policy_factory(tmp_path)
    a, b = make(), make()
    assert a is not b and len(loads) == 3  # no fork(): the first connection gets the loaded one, the next reloads


# ------------------------------------------------------------------ benchmark thin clients


def _robotwin_obs(rng):
    """What RoboTwin 2.0's TASK_ENV.get_obs() returns for aloha-agilex with D435 cameras (rgb, qpos, endpose)."""
    cam = lambda: {"intrinsic_cv": np.eye(3), "extrinsic_cv": np.zeros((3, 4)), "cam2world_gl": np.eye(4),
                   "rgb": rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)}
    left, right = list(rng.normal(size=7)), list(rng.normal(size=7))
    return {"observation": {"head_camera": cam(), "left_camera": cam(), "right_camera": cam(), "front_camera": cam()},
            "pointcloud": [],
            "joint_action": {"left_arm": left[:-1], "left_gripper": left[-1], "right_arm": right[:-1],
                             "right_gripper": right[-1], "vector": np.array(left + right)},
            "endpose": {"left_endpose": list(rng.normal(size=7)), "left_gripper": 0.5,
                        "right_endpose": list(rng.normal(size=7)), "right_gripper": 1.0}}


def test_robotwin_client_through_the_server():
    from repwam.serve import robotwin

    meta = {"camera_keys": ["observation.images.head", "observation.images.left", "observation.images.right"],
            "image_size": 64, "state_dim": 14, "action_dim": 14, "action_horizon": 8}
    rng = np.random.default_rng(0)
    obs = _robotwin_obs(rng)
    msg = robotwin.robotwin_observation(obs, meta)
    assert validate_observation(msg, meta).keys() == {*meta["camera_keys"], STATE_KEY}
    head = msg["observation.images.head"]
    assert head.shape == (64, 64, 3) and not head[:8].any() and not head[-8:].any() and head[8:56].any()  # padded
    np.testing.assert_allclose(msg[STATE_KEY], obs["joint_action"]["vector"].astype(np.float32))
    ee = robotwin.robotwin_observation(obs, {**meta, "state_dim": 16}, action_type="ee")
    assert ee[STATE_KEY].shape == (16,) and ee[STATE_KEY][7] == 0.5 and ee[STATE_KEY][15] == 1.0
    with pytest.raises(RepwamError, match="state_dim 16"):
        robotwin.robotwin_observation(obs, {**meta, "state_dim": 16})

    class TaskEnv:  # the two methods RoboTwin's eval loop gives a policy
        def __init__(self):
            self.actions = []

        def get_instruction(self):
            return "beat the block with the hammer"

        def take_action(self, action, action_type="qpos"):
            self.actions.append((np.asarray(action), action_type))

    with PolicyServer(lambda: EchoPolicy(meta), "127.0.0.1", 0).start() as server:
        model = robotwin.get_model({"server": server.url, "action_type": "qpos"})
        env = TaskEnv()
        for episode in range(2):
            robotwin.reset_model(model)
            for _ in range(3):
                robotwin.eval(env, model, obs)
        model.policy.close()
    first, last = env.actions[0][0], env.actions[-1][0]
    assert len(env.actions) == 6 and env.actions[0][1] == "qpos" and first.shape == (14,) and first.dtype == np.float64
    assert first[0] == pytest.approx(obs["joint_action"]["vector"][0] + 100, rel=1e-5)
    assert last[0] == pytest.approx(obs["joint_action"]["vector"][0] + 300, rel=1e-5)  # 2nd episode: steps 1..3


def _libero_obs(rng, res=256):
    """The keys and shapes of a LIBERO OffScreenRenderEnv observation (openpi renders at 256x256)."""
    img = rng.integers(0, 255, (res, res, 3), dtype=np.uint8)
    return {"agentview_image": img, "robot0_eye_in_hand_image": img.copy(),
            "robot0_eef_pos": np.array([0.1, -0.2, 1.0]), "robot0_eef_quat": np.array([0.0, 0.0, 0.70710678, 0.70710678]),
            "robot0_gripper_qpos": np.array([0.04, -0.04]), "robot0_joint_pos": np.zeros(7),
            "robot0_joint_pos_cos": np.ones(7), "robot0_eef_vel_lin": np.zeros(3), "object-state": np.zeros(40)}


def test_libero_client_through_the_server():
    from repwam.serve import libero

    meta = {"camera_keys": ["agentview", "wrist"], "image_size": 256, "state_dim": 8, "action_dim": 7,
            "action_horizon": 10}
    rng = np.random.default_rng(1)
    obs = _libero_obs(rng)
    msg = libero.libero_observation(obs, meta, "put the bowl on the plate")
    assert validate_observation(msg, meta).keys() == {"observation.images.agentview", "observation.images.wrist",
                                                      STATE_KEY, "prompt"}
    np.testing.assert_array_equal(msg["observation.images.agentview"], obs["agentview_image"][::-1, ::-1])
    np.testing.assert_allclose(msg[STATE_KEY], [0.1, -0.2, 1.0, 0, 0, np.pi / 2, 0.04, -0.04], atol=1e-6)
    small = libero.libero_observation(obs, {**meta, "image_size": 128})
    assert small["observation.images.wrist"].shape == (128, 128, 3)
    np.testing.assert_allclose(libero.quat_to_axis_angle([0, 0, 0, 1]), 0)

    class Env:  # LIBERO's OffScreenRenderEnv: reset, set_init_state, step -> (obs, reward, done, info)
        def __init__(self):
            self.steps = []

        def reset(self):
            self.steps.clear()

        def set_init_state(self, state):
            return obs

        def step(self, action):
            self.steps.append(action)
            return obs, 0.0, len(self.steps) == libero.NUM_STEPS_WAIT + 3, {}

    env = Env()
    with PolicyServer(lambda: EchoPolicy(meta), "127.0.0.1", 0).start() as server:
        with WebsocketPolicy(server.url) as policy:
            assert libero.run_episode(env, policy, "put the bowl on the plate", None, max_steps=5)
            assert not libero.run_episode(env, policy, "put the bowl on the plate", None, max_steps=2)
    assert env.steps[:libero.NUM_STEPS_WAIT] == [libero.DUMMY_ACTION] * libero.NUM_STEPS_WAIT
    assert len(env.steps[-1]) == 7 and env.steps[-1][0] == pytest.approx(0.1 + 200)
