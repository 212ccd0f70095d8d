"""How far π's first focus place can go on this data: a measurement beyond the paper.

PPO (appendix A.2) estimates π's gradient from one sampled place per image and a critic.
Here a copy of π is instead fitted to the *exact* expected step-2 reward over a grid of
places. For each training image, step 2 is run with its patch at every place g of the grid,
and R_g is what that place is worth: the paper's reward, the true class's probability there
(Eq. 6 less the glance's term, a constant per image), or, in a second fit, whether step 2 is
right there (the accuracy the targets are measured in). π's mean m is moved to maximise

    J(m) = Σ_g w_g(m) R_g,   w_g(m) ∝ exp(−‖g − m‖² / 2σ²),

R averaged under π's own Gaussian (σ = its std) restricted to the grid: no
sampling noise, no critic. The encoders and fC are not touched, so val's step 2 then says
how much the glance's features tell π about where to look, within this fit's limits (its
training images, π's architecture, the grid's spacing). It costs (images + held-out) × 50
encoder passes per stage measured.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.data import Subset

from glancefocus import GFNet
from glancefocus.data.sources import Splits, make_loader
from glancefocus.distributed import World, all_gather_objects, gather_in_order
from glancefocus.evaluation import anytime_accuracy, collect_probs, first_focus_grid, grid_locations
from glancefocus.models.policy import PatchPolicy
from glancefocus.training.trainer import Run


def expected_reward(mean: torch.Tensor, places: torch.Tensor, reward: torch.Tensor, std: float) -> torch.Tensor:
    """J(m) per image, (B,): the reward (places, B) averaged under N(mean (B, 2), std²) over ``places`` (places, 2)."""
    weights = (-torch.cdist(mean, places).square() / (2 * std**2)).softmax(dim=1)
    return (weights * reward.T).sum(dim=1)


@torch.inference_mode()
def glance_maps(model: GFNet, loader, world: World) -> torch.Tensor:
    """π's input at step 2 (the glance's feature map), (N, C, h, w), in dataset order."""
    model.eval()
    maps = [model.step(images.to(world.device), 0, None)[1].feature_map for images, _ in loader]
    return gather_in_order(torch.cat(maps), loader, world)


def fit_policy(policy: PatchPolicy, train: tuple[torch.Tensor, torch.Tensor], heldout: tuple[torch.Tensor, torch.Tensor],
               places: torch.Tensor, *, epochs: int, lr: float, batch: int, seed: int) -> tuple[PatchPolicy, list[float]]:
    """Adam on −J over the training (maps, rewards); returns the epoch with the best held-out J
    (epoch 0: π as it came) and the held-out J after each epoch."""
    def heldout_j() -> float:
        with torch.no_grad():
            return float(expected_reward(policy(heldout[0], None)[0], places, heldout[1], policy.std).mean())

    policy.requires_grad_(True)  # a model's π may come frozen from its last stage
    optimizer, generator = torch.optim.Adam(policy.parameters(), lr=lr), torch.Generator().manual_seed(seed)
    history, best = [heldout_j()], copy.deepcopy(policy.state_dict())
    maps, reward = train
    for _ in range(epochs):
        for index in torch.randperm(len(maps), generator=generator).split(batch):
            mean = policy(maps[index], None)[0]
            loss = -expected_reward(mean, places, reward[:, index], policy.std).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        history.append(heldout_j())
        if history[-1] >= max(history[:-1]):
            best = copy.deepcopy(policy.state_dict())
    policy.load_state_dict(best)
    return policy, history


#: What a place is worth to each fit: the paper's reward (Eq. 6), or step 2 being right there.
OBJECTIVES = {"reward": lambda grid: grid.true_prob, "accuracy": lambda grid: grid.right.float()}


@torch.inference_mode()
def step2_right(model: GFNet, fitted: dict, loader, world: World, seed: int) -> tuple[dict, dict]:
    """Whether step 2 is right on each image of ``loader`` with its patch where the model's π
    ("learned"), uniform chance (seeded, "random") and each of the ``fitted`` π put it; and
    the places each fitted π chose. Both by name, in dataset order."""
    model.eval()
    generator, right, places = torch.Generator().manual_seed(seed), {}, {}
    for images, targets in loader:
        images, targets = images.to(world.device), targets.to(world.device)
        _, state = model.step(images, 0, None)
        chosen = {name: policy(state.feature_map, None)[0] for name, policy in fitted.items()}
        for name, where in chosen.items():
            places.setdefault(name, []).append(where)
        chosen |= {"learned": "mean", "random": torch.rand(len(images), 2, generator=generator).to(world.device)}
        for name, where in chosen.items():
            right.setdefault(name, []).append(model.step(images, 1, state, locations=where)[0].logits.argmax(1) == targets)
    return tuple({name: gather_in_order(torch.cat(v), loader, world) for name, v in found.items()} for found in (right, places))


def paired_gain(better: torch.Tensor, worse: torch.Tensor) -> dict[str, float]:
    """Accuracy gain (points) of one policy over another on the same images, and its paired standard error."""
    difference = better.double() - worse.double()
    return {"gain": float(difference.mean() * 100), "paired_se": float(difference.std() / len(difference) ** 0.5 * 100)}


def _accuracy(right: torch.Tensor) -> float:
    return float(right.double().mean() * 100)


def _fit(model: GFNet, maps: dict[str, torch.Tensor], value: dict[str, torch.Tensor], places: torch.Tensor, world: World,
         **options) -> tuple[PatchPolicy, list[float]]:
    """One fit of a copy of ``model``'s π (see :func:`fit_policy`), the same on every process."""
    policy, history = fit_policy(copy.deepcopy(model.policy), (maps["train"], value["train"]), (maps["heldout"], value["heldout"]),
                                 places, **options)
    # every process measures its shard of val with rank 0's fit (GPU fits may differ in the last bits)
    policy.load_state_dict(all_gather_objects({k: v.cpu() for k, v in policy.state_dict().items()}, world)[0])
    return policy.eval(), history


def policy_bound(model: GFNet, splits: Splits, run: Run, batch: int, *, images: int, grid: int = 7, epochs: int = 40,
                 lr: float = 1e-3, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """Fit copies of ``model``'s π to each of :data:`OBJECTIVES` over a ``grid`` × ``grid`` grid on
    ``images`` training images (as evaluation crops them; the held-out images pick the epoch),
    once per seed (the order of the batches), then measure val's step 2 with each, with the
    model's π and with random places; and every step with the first seed's fit as the model's π."""
    subset = torch.randperm(len(splits.train_plain), generator=torch.Generator().manual_seed(seeds[0]))[:images].tolist()
    loaders = {name: make_loader(data, batch_size=batch, world=run.world, train=False)
               for name, data in (("train", Subset(splits.train_plain, subset)), ("heldout", splits.heldout))}
    val = make_loader(splits.val, batch_size=batch, world=run.world, train=False)
    # copies on π's device: gathered results come back on the CPU, as tensors made under
    # inference mode, which the fit's backward pass cannot save
    device, places = run.world.device, grid_locations(grid).to(run.world.device)
    maps = {name: glance_maps(model, loader, run.world).to(device, copy=True) for name, loader in loaders.items()}
    grids = {name: first_focus_grid(model, loader, run.world, grid=grid) for name, loader in loaders.items()}
    fitted, fits, report, adopted = {}, {}, {}, copy.deepcopy(model)  # fitted π and its report, by (objective, seed)
    for objective, worth in OBJECTIVES.items():
        value = {name: worth(found).to(device, copy=True) for name, found in grids.items()}
        for seed in seeds:
            fitted[(objective, seed)], history = _fit(model, maps, value, places, run.world, epochs=epochs, lr=lr, batch=256, seed=seed)
            fits[(objective, seed)] = {"seed": seed, "heldout_history": history, "heldout": max(history)}
        adopted.policy = fitted[(objective, seeds[0])]
        # held-out J: uniform over the places, under π's Gaussian, at each image's best place
        report[objective] = {"heldout": {"mean_place": float(value["heldout"].mean()),
                                         "learned": fits[(objective, seeds[0])]["heldout_history"][0],
                                         "best_place_per_image": float(value["heldout"].max(0).values.mean())},
                             "anytime_accuracy": anytime_accuracy(*collect_probs(adopted, val, run.world)),
                             "seeds": [fits[(objective, seed)] for seed in seeds]}
    right, chosen = step2_right(model, fitted, val, run.world, seeds[0])
    for name, fit in fits.items():
        fit |= {"step2_accuracy": _accuracy(right[name]), "over_random": paired_gain(right[name], right["random"]),
                "places": {"mean": chosen[name].mean(0).tolist(), "std": chosen[name].std(0).tolist()}}
    return {"grid": grid, "train_images": len(subset), "epochs": epochs, "lr": lr,
            "learned": {"step2_accuracy": _accuracy(right["learned"]), "over_random": paired_gain(right["learned"], right["random"])},
            "random": {"step2_accuracy": _accuracy(right["random"])}, "fits": report}
