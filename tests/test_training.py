import pytest
import torch
from torch import nn

from pyro_clip.errors import TrainingError
from pyro_clip.training.loop import TrainSettings, train


def _least_squares(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    w_true = torch.tensor([1.0, -2.0, 0.5])
    y = x @ w_true
    model = nn.Linear(3, 1, bias=False)
    nn.init.zeros_(model.weight)
    return model, x, y, w_true


def test_training_reaches_least_squares_solution():
    model, x, y, w_true = _least_squares()
    s = TrainSettings(epochs=60, batch_size=16, lr=0.05, weight_decay=0.0)
    hist = train(model, lambda i: ((model(x[i]).squeeze(-1) - y[i]) ** 2).mean(), 64, s,
                 progress=False)
    assert hist[-1] < 1e-4 < hist[0]
    torch.testing.assert_close(model.weight.detach().squeeze(), w_true, atol=1e-2, rtol=0)


def test_killed_run_resumes_from_checkpoint_and_matches_uninterrupted(tmp_path):
    s = TrainSettings(epochs=6, batch_size=16, lr=0.05, weight_decay=0.0)
    ref, x, y, _ = _least_squares()
    train(ref, lambda i: ((ref(x[i]).squeeze(-1) - y[i]) ** 2).mean(), 64, s, progress=False)

    model, *_ = _least_squares()
    calls = {"n": 0}

    def dies_in_epoch_4(i):
        calls["n"] += 1
        if calls["n"] == 3 * 4 + 1:
            raise KeyboardInterrupt
        return ((model(x[i]).squeeze(-1) - y[i]) ** 2).mean()

    ckpt = tmp_path / "train_state.pt"
    with pytest.raises(KeyboardInterrupt):
        train(model, dies_in_epoch_4, 64, s, checkpoint=ckpt, progress=False)
    resumed, *_ = _least_squares()
    train(resumed, lambda i: ((resumed(x[i]).squeeze(-1) - y[i]) ** 2).mean(), 64, s,
          checkpoint=ckpt, progress=False)
    torch.testing.assert_close(resumed.weight, ref.weight)


def test_nan_loss_stops_and_restores_last_good_weights(tmp_path):
    model, x, y, _ = _least_squares()
    s = TrainSettings(epochs=3, batch_size=64, lr=0.01, weight_decay=0.0)
    seen = []

    def loss(i):
        seen.append(model.weight.detach().clone())
        value = ((model(x[i]).squeeze(-1) - y[i]) ** 2).mean()
        return value * float("nan") if len(seen) == 3 else value

    with pytest.raises(TrainingError, match=r"loss became nan at epoch 3 step 1.*Lower the lear"):
        train(model, loss, 64, s, checkpoint=tmp_path / "c.pt", progress=False)
    torch.testing.assert_close(model.weight.detach(), seen[2])  # state after epoch 2
    assert (tmp_path / "c.pt").exists()
