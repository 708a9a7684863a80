"""The autograd engine: graph walking, accumulation, modules, SGD, gradcheck, devices."""
import numpy as np
import pytest

import engine as E
from engine import Adam, Function, Module, Parameter, SGD, Tensor, gradcheck, no_grad
from engine import backend


def leaf(a):
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


# ----------------------------------------------------------------- autograd
def test_arithmetic_gradients_with_broadcasting():
    rng = np.random.default_rng(0)
    a, b, c = leaf(rng.standard_normal((3, 4))), leaf(rng.standard_normal((1, 4))), leaf(rng.standard_normal(4))

    def f(a, b, c):
        y = (a * b + c) / (c * c + 1.0) - 2.0 * a
        return (y @ Tensor(np.ones((4, 2)))).reshape(2, 3).sum(axis=0) + y.mean(axis=(0, 1)) - (3.0 - a.sum())
    gradcheck(f, [a, b, c], mode="elementwise")
    gradcheck(f, [a, b, c], mode="directional")


def test_diamond_graph_accumulates_gradients():
    """x feeds four branches (as an Inception input does); its gradient is their sum."""
    x = leaf([1.0, 2.0, 3.0])
    y = x * 2.0 + x * x + (x * 3.0).sum() + x
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 + 2 * x.data + 9 + 1)


class _PassThrough(Function):
    """y = x; backward hands gy itself back (it aliases the caller's array)."""

    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        _PassThrough.handed.append(gy)
        return gy


class _FreshPassThrough(_PassThrough):
    fresh_grads = True

    def backward(self, gy):
        out = gy.copy()
        _PassThrough.handed.append(out)
        return out


@pytest.mark.parametrize("fn", [_PassThrough, _FreshPassThrough])
def test_a_leaf_copies_its_gradient_unless_the_function_made_it_fresh(fn):
    _PassThrough.handed = []
    x = leaf([1.0, 2.0])
    gy = np.array([3.0, 4.0])
    fn()(x).backward(gy)
    handed = _PassThrough.handed[0]
    if fn.fresh_grads:
        assert x.grad is handed                        # kept, no copy
    else:
        assert not np.shares_memory(x.grad, handed)    # gy may be someone else's array
    fn()(x).backward(gy)                               # the second gradient adds into it
    np.testing.assert_array_equal(x.grad, [6.0, 8.0])
    np.testing.assert_array_equal(gy, [3.0, 4.0])      # the caller's array untouched


def test_leaf_grad_accumulates_across_backward_calls():
    x = leaf([1.0, -1.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [3 + 2, 3 - 2])


def test_deep_graph_has_no_recursion_limit():
    x = leaf([1.0])
    y = x
    for _ in range(20000):
        y = y * 1.0001 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 20000], rtol=1e-9)


def test_topological_order_waits_for_all_consumers():
    """A function runs only once every consumer of its outputs has delivered its gradient."""
    order = []

    class Tag(Function):
        def __init__(self, name):
            self.name = name

        def forward(self, x):
            return x.copy()

        def backward(self, gy):
            order.append(self.name)
            return gy
    x = leaf([1.0])
    a = Tag("a")(x)
    b = Tag("b")(a)
    c = Tag("c")(Tag("long1")(Tag("long0")(a)))
    (b + c).sum().backward()
    assert order.index("a") == len(order) - 1
    np.testing.assert_allclose(x.grad, [2.0])


def test_graph_is_released_after_backward():
    x = leaf([2.0])
    y = x * x
    y.sum().backward()
    with pytest.raises(RuntimeError, match="already released"):
        y.sum().backward()
    z = x * x
    z.backward(np.ones(1), retain_graph=True)
    z.backward(np.ones(1))
    np.testing.assert_allclose(x.grad, [4.0 + 4.0 + 4.0])


def test_no_grad_records_nothing():
    x = leaf([1.0, 2.0])
    with no_grad():
        y = x * 2.0
        assert not E.is_grad_enabled()
    assert E.is_grad_enabled()
    assert y.creator is None and not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_backward_needs_grad_for_non_scalars():
    x = leaf([1.0, 2.0])
    with pytest.raises(ValueError, match="single-element"):
        (x * 2.0).backward()


def test_unused_output_of_a_multi_output_function_gets_zero_gradient():
    class Split(Function):
        def forward(self, x):
            return x[:2].copy(), x[2:].copy()

        def backward(self, ga, gb):
            return np.concatenate([ga, gb])
    x = leaf([1.0, 2.0, 3.0])
    a, _ = Split()(x)
    (a * 5.0).sum().backward()
    np.testing.assert_allclose(x.grad, [5, 5, 0])


def test_tensor_basics_and_devices():
    t = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert t.shape == (2, 3) and t.dtype == np.float32 and t.device == "cpu"
    assert t.to("cpu") is t
    np.testing.assert_array_equal(t.flatten(0).numpy(), np.arange(6))
    assert t.flatten().shape == (2, 3)
    assert Tensor(np.array([2.5])).item() == 2.5


@pytest.mark.skipif(backend.cuda_available(), reason="checks the error shown without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="needs CuPy and an NVIDIA GPU.*pip install cupy-cuda"):
        Tensor(np.ones(2)).to("cuda")
    with pytest.raises(RuntimeError, match="cupy-cuda"):
        E.normalize_device("cuda")
    assert E.normalize_device("auto") == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        E.normalize_device("tpu")


# ---------------------------------------------------------------- gradcheck
class WrongSquare(Function):
    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        return gy * 2.1 * self.x   # deliberately wrong by 5%


@pytest.mark.parametrize("mode", ["elementwise", "directional"])
def test_gradcheck_catches_a_wrong_gradient_and_says_where(mode):
    x = leaf(np.linspace(-1, 1, 6).reshape(2, 3))
    with pytest.raises(E.GradcheckError, match="FAILED.*worst"):
        gradcheck(lambda x: WrongSquare()(x), [x], mode=mode)
    res = gradcheck(lambda x: WrongSquare()(x), [x], mode=mode, raise_on_failure=False)
    assert not res.ok and res.worst_error > 0
    assert ("element" in res.worst_where) == (mode == "elementwise")


def test_gradcheck_wants_float64():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda x: x * 2.0, [Tensor(np.ones(3, np.float32), requires_grad=True)])


# ------------------------------------------------------------------- modules
class Tiny(Module):
    def __init__(self):
        super().__init__()
        self.w = Parameter(np.ones((2, 3)))
        self.inner = Module()
        self.inner.b = Parameter(np.zeros(2), lr_mult=2.0, decay_mult=0.0)

    def forward(self, x):
        return x @ self.w.reshape(3, 2) + self.inner.b


def test_module_names_state_dict_and_modes():
    m = Tiny()
    assert [n for n, _ in m.named_parameters()] == ["w", "inner.b"]
    sd = m.state_dict()
    assert list(sd) == ["w", "inner.b"] and m.num_parameters() == 8
    m.eval()
    assert not m.training and not m.inner.training
    m.train()
    assert m.inner.training
    other = Tiny()
    other.load_state_dict({"w": np.full((2, 3), 7.0), "inner.b": np.arange(2.0)})
    np.testing.assert_array_equal(other.w.data, 7.0)
    assert other.w.dtype == np.float64


def test_load_state_dict_errors_name_the_keys():
    m = Tiny()
    before = m.w.data.copy()
    with pytest.raises(KeyError, match="missing keys: inner.b.*unexpected keys: extra"):
        m.load_state_dict({"w": np.zeros((2, 3)), "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"shape mismatch for w: checkpoint \(3, 2\) vs model \(2, 3\)"):
        m.load_state_dict({"w": np.zeros((3, 2)), "inner.b": np.zeros(2)})
    np.testing.assert_array_equal(m.w.data, before)
    m.load_state_dict({"w": np.zeros((2, 3))}, strict=False)
    np.testing.assert_array_equal(m.w.data, 0.0)


# ----------------------------------------------------------------------- SGD
def _reference_sgd(w, grads, lr, momentum, wd, nesterov, lr_mult=1.0, decay_mult=1.0):
    """SGD written out from its definition, one step at a time."""
    w, v = w.copy(), None
    for g in grads:
        d = g + wd * decay_mult * w
        if momentum:
            v = d.copy() if v is None else momentum * v + d
            d = d + momentum * v if nesterov else v
        w = w - lr * lr_mult * d
    return w


@pytest.mark.parametrize("momentum,wd,nesterov", [(0, 0, False), (0.9, 0, False), (0.9, 5e-4, False),
                                                  (0.9, 1e-2, True)])
def test_sgd_matches_its_definition(momentum, wd, nesterov):
    rng = np.random.default_rng(1)
    w0, b0 = rng.standard_normal(4), rng.standard_normal(2)
    grads_w = [rng.standard_normal(4) for _ in range(4)]
    grads_b = [rng.standard_normal(2) for _ in range(4)]
    w, b = Parameter(w0.copy()), Parameter(b0.copy(), lr_mult=2.0, decay_mult=0.0)
    opt = SGD([w, b], lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    for gw, gb in zip(grads_w, grads_b):
        w.grad, b.grad = gw.copy(), gb.copy()
        opt.step()
    np.testing.assert_allclose(w.data, _reference_sgd(w0, grads_w, 0.1, momentum, wd, nesterov), rtol=1e-12)
    np.testing.assert_allclose(b.data, _reference_sgd(b0, grads_b, 0.1, momentum, wd, nesterov, 2.0, 0.0),
                               rtol=1e-12)


def test_sgd_parameter_groups_and_state_round_trip():
    rng = np.random.default_rng(2)
    w, b = Parameter(rng.standard_normal(3)), Parameter(rng.standard_normal(3))
    opt = SGD([{"params": [w]}, {"params": [b], "lr_mult": 2.0, "decay_mult": 0.0}],
              lr=0.05, momentum=0.9, weight_decay=0.1)
    g = rng.standard_normal(3)
    w.grad, b.grad = g.copy(), g.copy()
    opt.step()
    state = opt.state_dict()
    w2, b2 = Parameter(w.data.copy()), Parameter(b.data.copy())
    opt2 = SGD([{"params": [w2]}, {"params": [b2], "lr_mult": 2.0, "decay_mult": 0.0}], lr=1.0)
    opt2.load_state_dict(state)
    for o, p, q in ((opt, w, b), (opt2, w2, b2)):
        p.grad, q.grad = g.copy(), g.copy()
        o.step()
    np.testing.assert_array_equal(w.data, w2.data)
    np.testing.assert_array_equal(b.data, b2.data)
    with pytest.raises(ValueError, match="more than one group"):
        SGD([{"params": [w]}, {"params": [w]}], lr=0.1)


def test_sgd_matches_torch_when_installed():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((5,))
    grads = [rng.standard_normal(5) for _ in range(5)]
    for nesterov in (False, True):
        w = Parameter(w0.copy())
        opt = SGD([w], lr=0.2, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
        tw = torch.tensor(w0.copy(), requires_grad=True)
        topt = torch.optim.SGD([tw], lr=0.2, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
        for g in grads:
            w.grad = g.copy()
            opt.step()
            tw.grad = torch.tensor(g.copy())
            topt.step()
        np.testing.assert_allclose(w.data, tw.detach().numpy(), rtol=1e-12)


def _reference_adamw(w, grads, lr, wd, betas=(0.9, 0.999), eps=1e-8):
    """Adam with decoupled weight decay written out from its definition (float64)."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, 1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        w = w - lr * wd * w - lr * m_hat / (np.sqrt(v_hat) + eps)
    return w


def test_adam_matches_its_definition_with_groups_and_resumes_exactly():
    rng = np.random.default_rng(5)
    w0, b0 = rng.standard_normal((4, 3)), rng.standard_normal(3)
    grads = [(rng.standard_normal((4, 3)), rng.standard_normal(3)) for _ in range(6)]

    def make(w, b):
        return Adam([{"params": [w]}, {"params": [b], "lr_mult": 2.0, "decay_mult": 0.0}],
                    lr=0.01, weight_decay=0.1)
    w, b = Parameter(w0.copy()), Parameter(b0.copy())
    opt = make(w, b)
    for gw, gb in grads[:3]:
        w.grad, b.grad = gw.copy(), gb.copy()
        opt.step()
    # Resume from the state after three steps in a fresh optimiser: the same last three.
    w2, b2 = Parameter(w.data.copy()), Parameter(b.data.copy())
    opt2 = make(w2, b2)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.steps == 3
    for o, p, q in ((opt, w, b), (opt2, w2, b2)):
        for gw, gb in grads[3:]:
            p.grad, q.grad = gw.copy(), gb.copy()
            o.step()
    gws, gbs = [g for g, _ in grads], [g for _, g in grads]
    np.testing.assert_allclose(w.data, _reference_adamw(w0, gws, 0.01, 0.1), rtol=1e-12)
    np.testing.assert_allclose(b.data, _reference_adamw(b0, gbs, 0.02, 0.0), rtol=1e-12)
    np.testing.assert_array_equal(w2.data, w.data)
    np.testing.assert_array_equal(b2.data, b.data)
    with pytest.raises(ValueError, match="betas"):
        Adam([w], betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="does not fit"):
        make(Parameter(np.zeros(2)), Parameter(np.zeros(3))).load_state_dict(opt.state_dict())


def test_adam_matches_torch_adamw_when_installed():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    w0 = rng.standard_normal(7)
    w = Parameter(w0.copy())
    opt = Adam([w], lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.02)
    tw = torch.tensor(w0.copy(), requires_grad=True)
    topt = torch.optim.AdamW([tw], lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.02)
    for _ in range(5):
        g = rng.standard_normal(7)
        w.grad, tw.grad = g.copy(), torch.tensor(g.copy())
        opt.step()
        topt.step()
    np.testing.assert_allclose(w.data, tw.detach().numpy(), rtol=1e-12)


def test_train_a_tiny_model_end_to_end():
    """Logistic regression on separable data: the loss must fall."""
    import layers as L
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 2))
    t = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    lin = L.Linear(2, 2, dtype="float64")
    opt = SGD(lin.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = L.softmax_cross_entropy(lin(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_graph_keeps_only_what_backward_needs():
    """Max pooling's backward needs only the argmax: once the caller drops the
    pool's input tensor, its data must be freed although the graph lives on."""
    import gc
    import weakref

    import layers as L
    x = leaf(np.random.default_rng(5).standard_normal((1, 4, 8, 8)))
    h = L.lrn(x)                    # LRN saves its own input and scale, not its output
    alive = weakref.ref(h.data)
    y = L.max_pool2d(h, 3, 2)
    del h
    gc.collect()
    assert alive() is None
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
