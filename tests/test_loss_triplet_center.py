"""TripletCenterLoss against a loop over the paper's formula (D = 1/2 |f - c|^2), autograd, and training."""
import pytest
import torch
import torch.nn.functional as F
from batches import pk_batch, unbalanced_batch

from dmlutils.losses.registry import get_loss, hparams_of
from dmlutils.losses.triplet_center import TripletCenterLoss

BATCHES = [
    pytest.param(lambda: pk_batch(8, 4, seed=1), 8, id="pk8x4"),
    pytest.param(lambda: pk_batch(16, 5, dim=16, seed=2), 20, id="pk16x5-unused-classes"),
    pytest.param(lambda: unbalanced_batch([1, 2, 5, 3, 1, 7, 4], seed=4), 7, id="unbalanced-with-singletons"),
    pytest.param(lambda: pk_batch(2, 3, seed=5), 2, id="two-classes"),
]
MARGINS = [0.1, 0.5, 0.0]


def make_loss(num_classes, dim=16, margin=0.1, seed=0):
    torch.manual_seed(seed)
    return TripletCenterLoss(num_classes, dim, margin).double()


def values_and_grads(fn, embeddings, labels, centers):
    e = embeddings.detach().clone().requires_grad_(True)
    value = fn(e, labels)
    grad_e, grad_c = torch.autograd.grad(value, [e, centers])
    return value.detach(), grad_e, grad_c


def paper_loop(loss_module, embeddings, labels):
    """1/m sum_i [D(f_i, c_yi) + margin - min_{j != yi} D(f_i, c_j)]_+ with D = 1/2 |f - c|^2,
    f and c L2-normalised, one sample and one centre at a time."""
    terms = []
    for i in range(len(labels)):
        f = embeddings[i] / embeddings[i].norm()
        y = int(labels[i])
        distances = []
        for j in range(loss_module.num_classes):
            c = loss_module.centers[j] / loss_module.centers[j].norm()
            distances.append(0.5 * ((f - c) ** 2).sum())
        nearest_other = min((distances[j] for j in range(loss_module.num_classes) if j != y), key=lambda d: float(d.detach()))
        terms.append(torch.relu(distances[y] + loss_module.margin - nearest_other))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("make_batch, num_classes", BATCHES)
@pytest.mark.parametrize("margin", MARGINS)
def test_value_and_gradients_equal_paper_loop(make_batch, num_classes, margin):
    embeddings, labels = make_batch()
    loss = make_loss(num_classes, embeddings.shape[1], margin)
    ours = values_and_grads(loss, embeddings, labels, loss.centers)
    loop = values_and_grads(lambda e, y: paper_loop(loss, e, y), embeddings, labels, loss.centers)
    assert ours[0] > 0
    torch.testing.assert_close(ours[0], loop[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], loop[1], rtol=1e-10, atol=1e-12)  # w.r.t. embeddings
    torch.testing.assert_close(ours[2], loop[2], rtol=1e-10, atol=1e-12)  # w.r.t. centres


def test_float32_is_close_to_float64():
    embeddings, labels = pk_batch(8, 4, seed=6)
    torch.manual_seed(0)
    loss32 = TripletCenterLoss(8, 16)
    loss64 = TripletCenterLoss(8, 16).double()
    loss64.load_state_dict({"centers": loss32.centers.detach().double()})
    v32, v64 = loss32(embeddings.float(), labels), loss64(embeddings, labels)
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_batch, num_classes", BATCHES)
def test_center_weights_equal_autograd(make_batch, num_classes):
    embeddings, labels = make_batch()
    loss = make_loss(num_classes, embeddings.shape[1], margin=0.3)
    W = loss.center_weights(embeddings, labels)
    T = loss.center_similarity(embeddings).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss.from_center_similarity(T, labels), T)
    torch.testing.assert_close(W, -grad, rtol=0, atol=1e-12)
    own = F.one_hot(labels, num_classes).bool()
    assert (W[own] >= 0).all() and (W[~own] <= 0).all()
    assert (W != 0).any()


def test_center_weights_split_exact_ties_like_autograd():
    # Two other centres at exactly the same similarity to the sample: the max's gradient is split.
    loss = TripletCenterLoss(3, 2, margin=1.5).double()  # own T = 1, others 0: hinge 0.5 > 0
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64))
    embeddings, labels = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([0])
    W = loss.center_weights(embeddings, labels)
    T = loss.center_similarity(embeddings).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss.from_center_similarity(T, labels), T)
    torch.testing.assert_close(W, -grad, rtol=0, atol=1e-15)
    torch.testing.assert_close(W, torch.tensor([[1.0, -0.5, -0.5]], dtype=torch.float64))


def test_similarity_form_equals_half_squared_distance_form():
    # With unit f and c: 1/2 |f - c|^2 = 1 - <f, c>, so the hinge is max_other T - T_own + margin.
    embeddings, labels = pk_batch(5, 3, seed=7)
    loss = make_loss(5)
    T = loss.center_similarity(embeddings)
    f = F.normalize(embeddings, dim=1)
    c = F.normalize(loss.centers, dim=1)
    D = 0.5 * torch.cdist(f, c) ** 2
    torch.testing.assert_close(D, 1 - T, rtol=0, atol=1e-12)


def test_sgd_training_reduces_the_loss_and_moves_the_centres():
    torch.manual_seed(0)
    num_classes, dim = 5, 8
    labels = torch.arange(num_classes).repeat_interleave(12)
    class_means = 3 * torch.randn(num_classes, 16)
    inputs = class_means[labels] + torch.randn(len(labels), 16)
    model = torch.nn.Linear(16, dim)
    loss = TripletCenterLoss(num_classes, dim, margin=0.2)
    initial_centres = loss.centers.detach().clone()
    parameters = list(model.parameters()) + list(loss.parameters())
    losses = []
    for _ in range(40):
        value = loss(model(inputs), labels)
        gradients = torch.autograd.grad(value, parameters)
        # Plain SGD written out: torch.optim's first use imports torch._dynamo (seconds on 2 cores).
        with torch.no_grad():
            for parameter, gradient in zip(parameters, gradients):
                parameter -= 0.5 * gradient
        losses.append(float(value.detach()))
    assert losses[-1] < 0.25 * losses[0]
    moved = (F.normalize(loss.centers.detach(), dim=1) - F.normalize(initial_centres, dim=1)).norm(dim=1)
    assert (moved > 0.05).all()  # every class centre has learned a new direction


def test_batch_satisfying_every_margin_has_zero_loss_and_zero_gradient():
    loss = TripletCenterLoss(4, 8, margin=0.5).double()
    with torch.no_grad():
        loss.centers.copy_(torch.eye(8, dtype=torch.float64)[:4])
    g = torch.Generator().manual_seed(8)
    labels = torch.arange(4).repeat_interleave(3)
    embeddings = torch.eye(8, dtype=torch.float64)[labels] + 0.01 * torch.randn(12, 8, generator=g, dtype=torch.float64)
    value, grad_e, grad_c = values_and_grads(loss, embeddings, labels, loss.centers)
    assert float(value) == 0.0
    assert torch.equal(grad_e, torch.zeros_like(grad_e)) and torch.equal(grad_c, torch.zeros_like(grad_c))
    assert torch.equal(loss.center_weights(embeddings, labels), torch.zeros(12, 4, dtype=torch.float64))


@pytest.mark.parametrize(
    "labels", [pytest.param(torch.zeros(6, dtype=torch.long), id="single-class"), pytest.param(torch.arange(6), id="all-distinct")]
)
def test_degenerate_label_sets_still_learn_against_the_centres(labels):
    # Unlike the pair losses, a single-class or all-distinct batch still has centres to compare with.
    embeddings = torch.randn(6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    loss = make_loss(6, margin=0.5)
    value, grad_e, grad_c = values_and_grads(loss, embeddings, labels, loss.centers)
    assert torch.isfinite(value) and torch.isfinite(grad_e).all() and torch.isfinite(grad_c).all()
    torch.testing.assert_close(value, paper_loop(loss, embeddings, labels).detach(), rtol=1e-12, atol=0)


def test_centres_are_reproducible_from_torchs_seed_and_unit_norm():
    torch.manual_seed(3)
    a = TripletCenterLoss(10, 32)
    torch.manual_seed(3)
    b = TripletCenterLoss(10, 32)
    assert torch.equal(a.centers, b.centers)
    torch.testing.assert_close(a.centers.norm(dim=1), torch.ones(10))
    assert isinstance(a.centers, torch.nn.Parameter) and a.centers.requires_grad


def test_registered_and_hyperparameters_recorded():
    loss = get_loss("triplet_center", num_classes=7, embedding_dim=4, margin=0.2)
    assert isinstance(loss, TripletCenterLoss)
    assert hparams_of(loss) == {"num_classes": 7, "embedding_dim": 4, "margin": 0.2}


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0, 1, 5]), r"labels must be class indices in \[0, 5\), got values in \[0, 5\]"),
        (torch.tensor([-1, 1, 2]), r"labels must be class indices in \[0, 5\)"),
    ],
)
def test_labels_out_of_range_raise(labels, message):
    loss = TripletCenterLoss(5, 4)
    with pytest.raises(ValueError, match=message):
        loss(torch.randn(3, 4), labels)
    with pytest.raises(ValueError, match=message):
        loss.center_weights(torch.randn(3, 4), labels)


def test_bad_inputs_raise():
    loss = TripletCenterLoss(5, 4)
    with pytest.raises(ValueError, match="embeddings have dimension 3 but the centres have 4"):
        loss(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        loss(torch.randn(2, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="batch is empty"):
        loss(torch.randn(0, 4), torch.tensor([], dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=1, embedding_dim=4), "num_classes must be an integer >= 2"),
        (dict(num_classes=3.0, embedding_dim=4), "num_classes must be an integer >= 2"),
        (dict(num_classes=3, embedding_dim=0), "embedding_dim must be an integer >= 1"),
        (dict(num_classes=3, embedding_dim=4, margin=-1.0), "margin must be >= 0"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TripletCenterLoss(**kwargs)
