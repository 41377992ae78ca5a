"""Latent models: Stable-Diffusion-layout folders, classifier-free guidance, latents never clamped.

A tiny folder with random weights (UNet2DConditionModel + AutoencoderKL + DDIMScheduler, no text
encoder) is built in a temporary directory; a second one with a tiny CLIPTextModel + tokenizer
only when ``transformers`` is installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from onmanifold.guidance import DiffusionPosteriorSampling, SphericalGaussianGuidance
from onmanifold.losses import ClassifierLoss, DecodedLoss, FeatureLoss, MeasurementLoss, SumOfLosses
from onmanifold.model import ClassifierFreeGuidance, load_diffusion_model
from onmanifold.nets.checkpoint import CheckpointError
from onmanifold.nets.prompt_table import PromptTable
from onmanifold.operators import Downsample
from onmanifold.sampler import DDIMSampler, SamplerPlugin

WIDTH = 8  # cross-attention width of the tiny UNet
SCALE = 0.5  # the tiny VAE's scaling_factor


def _write_sd_folder(folder, text_encoder_width: int | None = None, prompt_table: bool = False):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    width = text_encoder_width or WIDTH
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=8, scaling_factor=SCALE,
    )
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    sched.save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": [None, None], "tokenizer": [None, None]}
    if text_encoder_width:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2, "circle</w>": 3, "large</w>": 4}
        (folder / "tok").mkdir()
        (folder / "tok" / "vocab.json").write_text(json.dumps(vocab))
        (folder / "tok" / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(str(folder / "tok" / "vocab.json"), str(folder / "tok" / "merges.txt"), model_max_length=6)
        tok.save_pretrained(folder / "tokenizer")
        shutil.rmtree(folder / "tok")
        cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                             max_position_embeddings=6, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        CLIPTextModel(cfg).save_pretrained(folder / "text_encoder")
        index.update(text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"])
    if prompt_table:
        PromptTable([["circle", "square"], ["small", "large"]], width).save(folder)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return _write_sd_folder(tmp_path_factory.mktemp("sd"), prompt_table=True)


@pytest.fixture(scope="module")
def loaded(sd_folder):
    return load_diffusion_model(sd_folder)


def _prompt(loaded, n=2):
    return loaded.encode_prompt(["circle large", "square"][:n])


# ------------------------------------------------------------------ loading
def test_an_sd_layout_folder_loads_as_a_latent_model(loaded):
    from diffusers import AutoencoderKL

    assert loaded.sample_shape == (4, 4, 4)
    assert loaded.data_range is None and loaded.model.data_range is None
    assert loaded.schedule.T == 1000
    vae = loaded.model.vae
    assert isinstance(vae, AutoencoderKL) and vae.config.scaling_factor == SCALE
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), vae.decode(z / SCALE).sample)
        x = torch.rand(2, 1, 8, 8) * 2 - 1
        torch.testing.assert_close(loaded.encode(x), SCALE * vae.encode(x).latent_dist.mode())
        assert loaded.decode(z).shape == (2, 1, 8, 8)


def test_the_prompt_table_encodes_prompts(loaded):
    e = _prompt(loaded)
    assert e.shape == (2, 2, WIDTH)
    table = loaded.model.prompt_encoder
    torch.testing.assert_close(e[0, 0], table.embeddings[0])  # circle
    torch.testing.assert_close(e[0, 1], table.embeddings[3])  # large
    assert torch.equal(e[1, 1], torch.zeros(WIDTH))  # no size named: the null token
    assert torch.equal(loaded.encode_prompt(""), torch.zeros(1, 2, WIDTH))
    with pytest.raises(ValueError, match="prompts: unknown word 'hexagon'"):
        loaded.encode_prompt("hexagon")
    with pytest.raises(ValueError, match="prompts: .* two words"):
        loaded.encode_prompt("circle square")


def test_the_loaded_weights_come_back_from_float16(tmp_path):
    from diffusers import UNet2DConditionModel

    folder = _write_sd_folder(tmp_path)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    unet.half().save_pretrained(folder / "unet")
    m = load_diffusion_model(folder)
    assert all(p.dtype == torch.float32 for p in m.model.parameters())


# ------------------------------------------------------------------ classifier-free guidance
class _Affine(torch.nn.Module):
    """A batch-independent toy eps-model: ``eps = x * mean(cond) + t / 1000`` (exact arithmetic per row)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        return x * cond.mean(dim=(1, 2)).view(-1, 1, 1, 1) + t.float().view(-1, 1, 1, 1) / 1000


def test_cfg_is_the_guided_combination_in_one_network_call():
    model = _Affine()
    x, t = torch.randn(3, 4, 4, 4), torch.tensor([10, 500, 999])
    cond, uncond = torch.randn(3, 2, WIDTH), torch.randn(1, 2, WIDTH)
    cfg = ClassifierFreeGuidance(model, 7.5, uncond)
    out = cfg(x, t, cond)
    assert model.calls == 1
    e_u, e_c = model(x, t, uncond.expand(3, -1, -1)), model(x, t, cond)
    assert torch.equal(out, e_u + 7.5 * (e_c - e_u))
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, uncond)(x, t, cond), e_c)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0, uncond[0])(x, t, cond), e_u)  # (L, D) uncond is broadcast too


def test_cfg_on_the_unet_equals_two_separate_calls(loaded):
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([900, 20])
    cond, null = _prompt(loaded), loaded.encode_prompt("")
    with torch.no_grad():
        e_u, e_c = loaded.model(x, t, null.expand(2, -1, -1)), loaded.model(x, t, cond)
        torch.testing.assert_close(ClassifierFreeGuidance(loaded.model, 3.0, null)(x, t, cond), e_u + 3.0 * (e_c - e_u), atol=1e-5, rtol=1e-4)


class _TwoCallGuidance(torch.nn.Module):
    """Reference: the same guided eps from two separate network calls."""

    data_range = None

    def __init__(self, model, scale, uncond):
        super().__init__()
        self.model, self.scale, self.uncond = model, scale, uncond

    def forward(self, x, t, cond):
        e_u = self.model(x, t, self.uncond.expand(x.shape[0], -1, -1))
        e_c = self.model(x, t, cond)
        return e_u + self.scale * (e_c - e_u)


class _EpsRecorder(SamplerPlugin):
    def __init__(self):
        self.eps = []

    def after_model(self, state):
        self.eps.append(state.eps.detach().clone())


def test_plugins_see_the_guided_eps_dps_through_the_decoder(loaded):
    null, cond = loaded.encode_prompt(""), _prompt(loaded)
    y = Downsample(2)(torch.rand(2, 1, 8, 8) * 2 - 1)
    runs = {}
    for name, model in (("cfg", ClassifierFreeGuidance(loaded.model, 3.0, null)), ("two calls", _TwoCallGuidance(loaded.model, 3.0, null))):
        rec = _EpsRecorder()
        dps = DiffusionPosteriorSampling(DecodedLoss(MeasurementLoss(Downsample(2), y), loaded.decode), zeta=0.5)
        out = DDIMSampler(loaded.schedule, 3, eta=1.0).sample(model, shape=loaded.sample_shape, num_samples=2, seed=1, cond=cond, plugins=[dps, rec])
        runs[name] = (out, rec.eps)
    (a, eps_a), (b, eps_b) = runs["cfg"], runs["two calls"]
    for ea, eb in zip(eps_a, eps_b):
        torch.testing.assert_close(ea, eb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(loaded.decode(a)).all()


def test_dsg_through_the_decoder_runs_on_cfg(loaded):
    null, cond = loaded.encode_prompt(""), _prompt(loaded)
    y = Downsample(2)(torch.rand(2, 1, 8, 8) * 2 - 1)
    dsg = SphericalGaussianGuidance(DecodedLoss(MeasurementLoss(Downsample(2), y), loaded.decode), guidance_rate=0.2)
    cfg = ClassifierFreeGuidance(loaded.model, 2.0, null)
    plain = DDIMSampler(loaded.schedule, 3, eta=1.0).sample(cfg, shape=loaded.sample_shape, num_samples=2, seed=1, cond=cond)
    guided = DDIMSampler(loaded.schedule, 3, eta=1.0).sample(cfg, shape=loaded.sample_shape, num_samples=2, seed=1, cond=cond, plugins=[dsg])
    assert torch.isfinite(guided).all() and not torch.equal(plain, guided)
    assert loaded.decode(guided).shape == (2, 1, 8, 8)


# ------------------------------------------------------------------ latents are never clamped
class _ZeroEps(torch.nn.Module):
    """eps = 0: x0_hat = x_t / sqrt(abar_t), far outside [-1, 1] at large t."""

    def forward(self, x, t, cond=None):
        return torch.zeros_like(x)


class _ZeroEpsLatent(_ZeroEps):
    data_range = None


def test_latents_are_never_clamped_but_pixels_still_are(loaded):
    x_T = torch.full((1, 4, 4, 4), 2.0)
    sampler = DDIMSampler(loaded.schedule, 4)  # the default sampler: clamp_x0 left unset
    assert sampler.clamp_x0 is True
    pixel = sampler.sample(_ZeroEps(), x_T)
    latent = sampler.sample(_ZeroEpsLatent(), x_T)
    assert pixel.abs().max() <= 1.0
    a0 = float(loaded.schedule.alphas_cumprod[sampler.timesteps[0]])
    torch.testing.assert_close(latent, x_T / a0**0.5)  # DDIM with eps = 0 and no clamping: x0 = x_T / sqrt(abar)
    # CFG keeps the model's (missing) data range visible; x0_hat of the real latent model is not clamped either
    cfg = ClassifierFreeGuidance(loaded.model, 2.0, loaded.encode_prompt(""))
    assert cfg.data_range is None

    class X0Max(SamplerPlugin):
        top = 0.0

        def after_step(self, state):
            X0Max.top = max(X0Max.top, float(state.x0_hat.abs().max()))

    DDIMSampler(loaded.schedule, 3).sample(cfg, torch.full((2, 4, 4, 4), 30.0), cond=_prompt(loaded), plugins=[X0Max()])
    assert X0Max.top > 1.0
    with pytest.raises(ValueError, match="clamp_x0: the model's data has no range"):
        DDIMSampler(loaded.schedule, 4, clamp_x0=True).sample(_ZeroEpsLatent(), x_T)
    with pytest.raises(ValueError, match="clamp_x0: True needs a data_range"):
        DDIMSampler(loaded.schedule, 4, clamp_x0=True, data_range=None)


def test_decoded_loss_carries_the_inner_loss_settings(loaded):
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    y = torch.zeros(2, 1, 4, 4)
    assert DecodedLoss(ClassifierLoss(clf, 1), loaded.decode).clamp_x0 is False
    assert DecodedLoss(MeasurementLoss(Downsample(2), y), loaded.decode).clamp_x0 is True
    assert DecodedLoss(lambda x: x.flatten(1).norm(dim=1), loaded.decode).clamp_x0 is True
    both = SumOfLosses([DecodedLoss(ClassifierLoss(clf, 1), loaded.decode), FeatureLoss(lambda z: z.flatten(1), torch.zeros(1, 64))])
    assert both.clamp_x0 is False
    with pytest.raises(ValueError, match="mixes losses"):
        SumOfLosses([DecodedLoss(ClassifierLoss(clf, 1), loaded.decode), DecodedLoss(MeasurementLoss(Downsample(2), y), loaded.decode)])


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("component", ["vae", "unet", "scheduler"])
def test_a_folder_missing_a_component_names_it(sd_folder, tmp_path, component):
    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    shutil.rmtree(folder / component)
    with pytest.raises(CheckpointError, match=f"missing: {component}/"):
        load_diffusion_model(folder)


def test_prompt_embeddings_of_the_wrong_width_name_cond(loaded):
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 10])
    with pytest.raises(ValueError, match="cond: .*width 8, got width 5"):
        loaded.model(x, t, torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match="cond: expected prompt embeddings"):
        loaded.model(x, t, None)
    with pytest.raises(ValueError, match="cond: expected 1 or 2 rows"):
        loaded.model(x, t, torch.zeros(3, 2, WIDTH))


def test_bad_cfg_arguments(loaded):
    null = loaded.encode_prompt("")
    for bad in (-1.0, float("nan"), True, "7"):
        with pytest.raises(ValueError, match="guidance_scale"):
            ClassifierFreeGuidance(loaded.model, bad, null)
    with pytest.raises(ValueError, match="uncond: expected a tensor"):
        ClassifierFreeGuidance(loaded.model, 2.0, None)
    cfg = ClassifierFreeGuidance(loaded.model, 2.0, torch.zeros(1, 3, WIDTH))
    with pytest.raises(ValueError, match="uncond: shape"):
        cfg(torch.randn(2, 4, 4, 4), torch.tensor([5, 5]), _prompt(loaded))
    with pytest.raises(ValueError, match="cond: classifier-free guidance needs a condition"):
        ClassifierFreeGuidance(loaded.model, 2.0, null)(torch.randn(2, 4, 4, 4), torch.tensor([5, 5]), None)


def test_pixel_models_have_no_decoder_and_no_prompts(tmp_path, sd_folder):
    from onmanifold.model import LoadedModel

    pixel = LoadedModel(_ZeroEps(), load_diffusion_model(sd_folder).schedule, (1, 8, 8), {}, (-1.0, 1.0), "toy")
    with pytest.raises(ValueError, match="model: 'toy' is not a latent model"):
        pixel.decode(torch.zeros(1, 4, 4, 4))
    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    (folder / "prompt_embeddings.json").unlink()
    with pytest.raises(ValueError, match="prompts: this model has no text encoder"):
        load_diffusion_model(folder).encode_prompt("circle")


# ------------------------------------------------------------------ with a text encoder
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers (the optional 'text' extra) is not installed")
def test_an_sd_folder_with_a_clip_text_encoder(tmp_path):
    folder = _write_sd_folder(tmp_path, text_encoder_width=WIDTH)
    m = load_diffusion_model(folder)
    e = m.encode_prompt(["circle large", ""])
    assert e.shape == (2, 6, WIDTH) and torch.isfinite(e).all()
    cfg = ClassifierFreeGuidance(m.model, 3.0, e[1:])
    z = DDIMSampler(m.schedule, 2).sample(cfg, shape=m.sample_shape, num_samples=1, seed=0, cond=e[:1])
    assert m.decode(z).shape == (1, 1, 8, 8)
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(CheckpointError, match="missing: tokenizer/"):
        load_diffusion_model(folder)


# ------------------------------------------------------------------ training (a few steps) and the command line
def _weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_latent_training_resumes_to_the_same_weights_and_writes_an_sd_folder(tmp_path):
    from diffusers import AutoencoderKL

    from onmanifold.train_latent import train_autoencoder, train_latent_diffusion

    kw = dict(batch_size=4, save_every=1, std_samples=32, progress=False)
    straight = train_autoencoder(tmp_path / "a", steps=2, **kw)
    train_autoencoder(tmp_path / "b", steps=1, **kw)
    resumed = train_autoencoder(tmp_path / "b", steps=2, resume=True, **kw)
    wa, wb = (_weights(AutoencoderKL.from_pretrained(p, local_files_only=True)) for p in (straight, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = json.loads((straight / "onmanifold.json").read_text())
    assert AutoencoderKL.from_pretrained(straight).config.scaling_factor == pytest.approx(1 / meta["latent_std"])
    out = train_latent_diffusion(straight, tmp_path / "ldm", steps=2, batch_size=4, num_latents=8, progress=False)
    for part in ("model_index.json", "unet", "vae", "scheduler", "prompt_embeddings.safetensors", "prompt_embeddings.json"):
        assert (out / part).exists(), part
    m = load_diffusion_model(out)
    assert m.sample_shape == (4, 8, 8) and m.data_range is None
    assert m.encode_prompt(["circle large", "triangle", ""]).shape == (3, 2, 32)
    assert m.decode(torch.zeros(1, 4, 8, 8)).shape == (1, 1, 32, 32)


@pytest.mark.parametrize("argv, name", [
    (["train", "autoencoder", "--out", "X", "--steps", "0"], "steps"),
    (["train", "latent-diffusion", "--vae", "X", "--out", "Y", "--cond-dropout", "1.5"], "cond_dropout"),
])
def test_the_training_commands_refuse_bad_input_with_exit_code_2(argv, name, capsys, tmp_path):
    from onmanifold.cli import main

    argv = [str(tmp_path / a) if a in ("X", "Y") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith((f"onmanifold: error: {name}", f"onmanifold: error: --{name.replace('_', '-')}"))


# ------------------------------------------------------------------ the bundled latent shapes model
def test_the_bundled_latent_shapes_model_follows_its_prompts_under_cfg():
    from onmanifold.data.shapes import SIZE_NAMES, TYPE_NAMES
    from onmanifold.evaluate import eval_classifier
    from onmanifold.nets.checkpoint import list_bundled

    if "shapes-latent" not in list_bundled():
        pytest.skip("the latent shapes model is not bundled in this checkout")
    m = load_diffusion_model("shapes-latent")
    assert m.sample_shape == (4, 8, 8) and m.data_range is None
    labels = torch.tensor([[a, b] for a in range(3) for b in range(3)]).repeat_interleave(2, dim=0)
    cond = m.encode_prompt([f"{TYPE_NAMES[a]} {SIZE_NAMES[b]}" for a, b in labels.tolist()])
    cfg = ClassifierFreeGuidance(m.model, 3.0, m.encode_prompt(""))
    z = DDIMSampler(m.schedule, 10).sample(cfg, shape=m.sample_shape, num_samples=len(labels), seed=0, cond=cond)
    with torch.no_grad():
        logits = eval_classifier("shapes")(m.decode(z).clamp(-1, 1))
    hits = (logits[0].argmax(1) == labels[:, 0]) & (logits[1].argmax(1) == labels[:, 1])
    assert hits.float().mean() >= 0.8


def test_the_loaded_sampler_of_a_latent_model_never_clamps(loaded):
    s = loaded.sampler(4, eta=0.5)
    assert s.clamp_x0 is False and s.num_steps == 4
    cfg = ClassifierFreeGuidance(loaded.model, 2.0, loaded.encode_prompt(""))
    z = s.sample(cfg, shape=loaded.sample_shape, num_samples=2, seed=0, cond=_prompt(loaded))
    assert z.shape == (2, 4, 4, 4) and torch.isfinite(z).all()


# ------------------------------------------------------------------ the latent bed, the README example, the command line (issue 14, items 2, 4, 7)
def _bundled_latent_or_skip():
    from onmanifold.nets.checkpoint import list_bundled

    if "shapes-latent" not in list_bundled():
        pytest.skip("the latent shapes model is not bundled in this checkout")


def test_the_latent_shapes_bed_is_registered_with_the_bundled_model():
    from onmanifold.testbeds import bed_of_model, get_testbed

    _bundled_latent_or_skip()
    bed, shapes = get_testbed("shapes-latent"), get_testbed("shapes")
    m = load_diffusion_model(bed.model)
    assert bed.sample_shape == tuple(m.sample_shape) == (4, 8, 8) and bed.data_shape == shapes.data_shape == (1, 32, 32)
    assert bed.split_seeds == shapes.split_seeds and bed.attributes == shapes.attributes and bed.tasks == shapes.tasks
    assert abs(bed.schedule().betas - m.schedule.betas).max() < 1e-12
    assert torch.equal(bed.images("val", 3)[0], shapes.images("val", 3)[0])
    assert bed.make_task("box", 2, 0).masks.shape[-2:] == (32, 32)
    labels = torch.tensor([[0, 2], [1, 0]])
    assert bed.prompts(labels) == ["circle large", "square small"]
    assert torch.equal(m.encode_prompt(bed.prompts(labels)), m.model.prompt_encoder.encode_labels(labels))
    assert bed_of_model("shapes-latent") == "shapes-latent"
    with pytest.raises(ValueError, match="labels"):
        bed.prompts(torch.tensor([0, 1]))


def _readme_block(marker: str) -> str:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)\n```", text, re.S)
    assert block, f"README.md has no {marker} block"
    return block.group(1)


def test_the_readme_latent_example_runs_as_written():
    """The README's latent example (load, CFG, DSG through the decoder) runs as written: the block alone, in a fresh scope."""
    _bundled_latent_or_skip()
    code = _readme_block("latent-example")
    assert "latent.sampler(25, eta=1.0)" in code
    code = code.replace("latent.sampler(25, eta=1.0)", "latent.sampler(8, eta=1.0)")  # only the amount shrinks (as the walkthrough test does)
    scope: dict = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, "README.md (latent example)", "exec"), scope)
    finally:
        torch.set_num_threads(before)
    assert scope["z"].shape == (4, 4, 8, 8) and scope["images"].shape == scope["restored"].shape == (4, 1, 32, 32)
    assert torch.isfinite(scope["restored"]).all()
    assert scope["dsg"].guidance_window == (0, 900) and scope["dsg"].time_travel == 2


def test_sample_takes_prompt_guidance_scale_window_and_time_travel(tmp_path, capsys):
    from onmanifold.cli import main

    _bundled_latent_or_skip()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread
    try:
        _run_the_flags(main, tmp_path, capsys)
    finally:
        torch.set_num_threads(before)


def _run_the_flags(main, tmp_path, capsys) -> None:
    out = tmp_path / "s"
    assert main(["sample", "shapes-latent", "-n", "2", "--steps", "4", "--eta", "1", "--prompt", "triangle large", "--guidance-scale", "3",
                 "--method", "dsg", "--task", "sr", "--guidance-window", "0,800", "--time-travel", "2", "--out", str(out), "--no-progress"]) == 0
    info = json.loads((out / "samples.json").read_text())
    assert info["prompt"] == "triangle large" and info["guidance_scale"] == 3.0
    assert info["guidance_window"] == [0, 800] and info["time_travel"] == 2 and info["bed"] == "shapes-latent"
    capsys.readouterr()
    bad = {
        ("--method", "dsg", "--task", "sr", "--guidance-window", "990,999"): "--guidance-window",  # the 4 steps are t = 751, 501, 251, 1
        ("--method", "dsg", "--task", "sr", "--guidance-window", "5"): "--guidance-window",
        ("--method", "dps", "--task", "sr", "--guidance-window", "9,3"): "--guidance-window",
        ("--method", "dps", "--task", "sr", "--time-travel", "0"): "--time-travel",
        ("--guidance-window", "0,900"): "--guidance-window",  # without dps/dsg
        ("--time-travel", "2"): "--time-travel",
        ("--prompt", "hexagon"): "--prompt",
        ("--guidance-scale", "-1"): "--guidance-scale",
    }
    for extra, flag in bad.items():
        assert main(["sample", "shapes-latent", "-n", "2", "--steps", "4", "--eta", "1", *extra, "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"onmanifold: error: {flag}"), (extra, err)
        assert not (tmp_path / "bad").exists()
    assert main(["sample", "digits-unet", "-n", "1", "--steps", "2", "--prompt", "circle", "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("onmanifold: error: --prompt")
