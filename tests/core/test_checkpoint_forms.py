"""Every common diffusers checkpoint form loads locally, and an unsupported one gets one error naming what is missing.

Each form is written by diffusers itself (``save_pretrained``) from a tiny random UNet into a tmp dir:
pipeline folders (DDPM, DDIM), bare UNet + scheduler folders, ``.safetensors`` and ``.bin``, the
``fp16`` variant, sharded weights, a non-square ``sample_size``, class-conditional and
learned-variance UNets, and a pipeline object in memory (:func:`onmanifold.model.from_pipeline`).
The network is blocked for the whole module: nothing may be downloaded.
"""

import json
import socket

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from onmanifold.model import from_pipeline, load_diffusion_model
from onmanifold.nets.checkpoint import CheckpointError


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint loader reached for the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one CPU thread is many times faster than two on a machine shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet(sample_size=8, channels=3, out_channels=None, **kw) -> UNet2DModel:
    torch.manual_seed(0)
    kw = {"down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D"), **kw}
    net = UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=out_channels or channels, layers_per_block=1,
                      block_out_channels=(8, 16), norm_num_groups=4, **kw).eval()
    with torch.no_grad():  # move the zero-initialised output layer so the output is not trivially 0
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def scheduler(**kw):
    return DDPMScheduler(num_train_timesteps=100, **kw)


def check_loads_as(loaded, net, shape, cond=None):
    """The loaded eps-model is the UNet (first C channels), the shape is the config's, and a few steps sample finite values."""
    assert loaded.sample_shape == shape
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 70])
    with torch.no_grad():
        expect = net(x, t, class_labels=cond).sample[:, : shape[0]]
        torch.testing.assert_close(loaded.model(x, t, cond), expect)
    out = loaded.sampler(4).sample(loaded.model, shape=shape, num_samples=2, seed=0, cond=cond)
    assert out.shape == (2, *shape) and torch.isfinite(out).all()


@pytest.mark.parametrize("pipeline", ["DDPM", "DDIM"])
def test_pipeline_folders(tmp_path, pipeline):
    net = tiny_unet()
    pipe = DDPMPipeline(net, scheduler()) if pipeline == "DDPM" else DDIMPipeline(net, DDIMScheduler(num_train_timesteps=100))
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = load_diffusion_model(tmp_path / "pipe")
    check_loads_as(loaded, net, (3, 8, 8))
    assert loaded.scheduler_config["_class_name"] == f"{pipeline}Scheduler"


@pytest.mark.parametrize("where", ["beside", "subfolder"])
def test_bare_unet_with_scheduler(tmp_path, where):
    net = tiny_unet()
    net.save_pretrained(tmp_path / "m")
    scheduler().save_pretrained(tmp_path / "m" / ("" if where == "beside" else "scheduler"))
    check_loads_as(load_diffusion_model(tmp_path / "m"), net, (3, 8, 8))


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("sharded", [False, True])
def test_weight_files_safetensors_bin_and_sharded(tmp_path, safe, sharded):
    net = tiny_unet()
    net.save_pretrained(tmp_path / "m", safe_serialization=safe, max_shard_size="20KB" if sharded else "10GB")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert any(n.endswith(".index.json") for n in names) is sharded
    assert all(n.endswith(".safetensors" if safe else ".bin") for n in names if n.startswith("diffusion_pytorch_model") and "index" not in n)
    scheduler().save_pretrained(tmp_path / "m")
    check_loads_as(load_diffusion_model(tmp_path / "m"), net, (3, 8, 8))


@pytest.mark.parametrize("sharded", [False, True])
def test_fp16_variant(tmp_path, sharded):
    net = tiny_unet()
    pipe = DDPMPipeline(net.half(), scheduler())
    pipe.save_pretrained(tmp_path / "pipe", variant="fp16", max_shard_size="20KB" if sharded else "10GB")
    net = net.float()
    loaded = load_diffusion_model(tmp_path / "pipe", variant="fp16")
    half_weights = {k: v.half().float() for k, v in net.state_dict().items()}
    assert all(torch.equal(loaded.model.unet.state_dict()[k], v) for k, v in half_weights.items())
    check_loads_as(loaded, loaded.model.unet, (3, 8, 8))
    with pytest.raises(CheckpointError, match=r"weight variant\(s\) fp16: pass variant='fp16'"):
        load_diffusion_model(tmp_path / "pipe")
    with pytest.raises(CheckpointError, match="no weights of variant 'bf16'.*holds the weight variant"):
        load_diffusion_model(tmp_path / "pipe", variant="bf16")


def test_legacy_attention_names(tmp_path):
    """diffusers < 0.15 named attention weights query/key/value/proj_attn (the google/ddpm-* checkpoints, .bin): they load."""
    net = tiny_unet(down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    DDPMPipeline(net, scheduler()).save_pretrained(tmp_path / "pipe", safe_serialization=False)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for k, v in net.state_dict().items():
        for new_name, old_name in old.items():
            k = k.replace(f".attentions.0.{new_name}.", f".attentions.0.{old_name}.").replace(f".attentions.1.{new_name}.", f".attentions.1.{old_name}.")
        state[k] = v
    assert any(".query." in k for k in state) and any(".proj_attn." in k for k in state)
    torch.save(state, tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.bin")
    check_loads_as(load_diffusion_model(tmp_path / "pipe"), net, (3, 8, 8))


def test_non_square_sample_size(tmp_path):
    net = tiny_unet(sample_size=(8, 12))
    DDPMPipeline(net, scheduler()).save_pretrained(tmp_path / "pipe")
    loaded = load_diffusion_model(tmp_path / "pipe")
    check_loads_as(loaded, net, (3, 8, 12))


def test_class_conditional_unet(tmp_path):
    net = tiny_unet(num_class_embeds=5)
    DDPMPipeline(net, scheduler()).save_pretrained(tmp_path / "pipe")
    loaded = load_diffusion_model(tmp_path / "pipe")
    assert loaded.model.num_classes == 5
    labels = torch.tensor([1, 4])
    check_loads_as(loaded, net, (3, 8, 8), cond=labels)
    x = torch.randn(2, 3, 8, 8)
    a, b = loaded.model(x, torch.tensor([5, 5]), torch.tensor([0, 0])), loaded.model(x, torch.tensor([5, 5]), torch.tensor([3, 3]))
    assert not torch.allclose(a, b)  # the label is used
    with pytest.raises(ValueError, match=r"^cond: this UNet is class-conditional \(num_class_embeds = 5\)"):
        loaded.model(x, torch.tensor([5, 5]))
    with pytest.raises(ValueError, match=r"^cond: class labels must lie in \[0, 4\]"):
        loaded.model(x, torch.tensor([5, 5]), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="^cond: .*LongTensor of shape"):
        loaded.model(x, torch.tensor([5, 5]), torch.tensor([0.0, 1.0]))


def test_learned_variance_unet(tmp_path):
    """ADM / guided-diffusion form: out_channels = 2C; eps = the first C channels; the config's learned_range drives eta = 1."""
    net = tiny_unet(out_channels=6)
    DDPMPipeline(net, scheduler(variance_type="learned_range")).save_pretrained(tmp_path / "pipe")
    loaded = load_diffusion_model(tmp_path / "pipe")
    assert loaded.model.learned_variance
    check_loads_as(loaded, net, (3, 8, 8))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 50])
    with torch.no_grad():
        out = loaded.model.full_prediction(x, t)
        torch.testing.assert_close(out.variance, net(x, t).sample[:, 3:])
    assert loaded.sampler(100, 1.0).variance == "learned_range" and loaded.sampler(10, 0.0).variance == "fixed_small"
    x = loaded.sampler(10, 1.0).sample(loaded.model, shape=(3, 8, 8), num_samples=2, seed=0)
    assert torch.isfinite(x).all()


def test_pipeline_in_memory():
    net = tiny_unet()
    pipe = DDIMPipeline(net, DDIMScheduler(num_train_timesteps=100, clip_sample=False, timestep_spacing="trailing"))
    loaded = from_pipeline(pipe)
    assert loaded.model.unet is net  # used as it is, not copied
    check_loads_as(loaded, net, (3, 8, 8))
    s = loaded.sampler(10)
    assert s.clamp_x0 is False and s.timesteps[0] == 99 and loaded.scheduler_config["_class_name"] == "DDIMScheduler"


def test_in_memory_and_folder_give_the_same_samples(tmp_path):
    net = tiny_unet()
    pipe = DDPMPipeline(net, scheduler())
    pipe.save_pretrained(tmp_path / "pipe")
    a, b = from_pipeline(pipe), load_diffusion_model(tmp_path / "pipe")
    xa = a.sampler(5, 1.0).sample(a.model, shape=a.sample_shape, num_samples=2, seed=1)
    xb = b.sampler(5, 1.0).sample(b.model, shape=b.sample_shape, num_samples=2, seed=1)
    assert torch.equal(xa, xb)


# ---------------------------------------------------------------- unsupported forms: one error naming what is missing
def test_folder_without_weights(tmp_path):
    net = tiny_unet()
    DDPMPipeline(net, scheduler()).save_pretrained(tmp_path / "pipe")
    for f in (tmp_path / "pipe" / "unet").glob("diffusion_pytorch_model*"):
        f.unlink()
    with pytest.raises(CheckpointError, match=r"missing weights file diffusion_pytorch_model\.safetensors \(or \.bin, or a sharded"):
        load_diffusion_model(tmp_path / "pipe")


def test_folder_without_scheduler(tmp_path):
    tiny_unet().save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no scheduler/scheduler_config.json"):
        load_diffusion_model(tmp_path / "m")


def test_shard_outside_the_folder(tmp_path):
    tiny_unet().save_pretrained(tmp_path / "m", max_shard_size="20KB")
    scheduler().save_pretrained(tmp_path / "m")
    index = tmp_path / "m" / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = "../elsewhere.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="names shard '../elsewhere.safetensors' outside the folder"):
        load_diffusion_model(tmp_path / "m")


def test_missing_shard(tmp_path):
    tiny_unet().save_pretrained(tmp_path / "m", max_shard_size="20KB")
    scheduler().save_pretrained(tmp_path / "m")
    next((tmp_path / "m").glob("diffusion_pytorch_model-00002-*")).unlink()
    with pytest.raises(CheckpointError, match="missing weights file diffusion_pytorch_model-00002"):
        load_diffusion_model(tmp_path / "m")


def test_unsupported_output_channels(tmp_path):
    DDPMPipeline(tiny_unet(out_channels=4), scheduler()).save_pretrained(tmp_path / "pipe")
    with pytest.raises(CheckpointError, match="out_channels = 4 is neither in_channels = 3"):
        load_diffusion_model(tmp_path / "pipe")


def test_flow_matching_scheduler_is_refused(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    tiny_unet().save_pretrained(tmp_path / "m")
    FlowMatchEulerDiscreteScheduler().save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="scheduler_config.json: _class_name: 'FlowMatchEulerDiscreteScheduler'"):
        load_diffusion_model(tmp_path / "m")


def test_unsupported_setting_at_loading_names_the_key(tmp_path):
    net = tiny_unet()
    DDPMPipeline(net, scheduler()).save_pretrained(tmp_path / "pipe")
    path = tmp_path / "pipe" / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "timestep_spacing": "karras"}))
    with pytest.raises(CheckpointError, match="scheduler_config.json: timestep_spacing: expected one of leading, trailing, linspace"):
        load_diffusion_model(tmp_path / "pipe")


def test_pipeline_object_without_parts():
    with pytest.raises(ValueError, match="^pipe: .*without scheduler"):
        from_pipeline(type("P", (), {"unet": tiny_unet()})())
    with pytest.raises(ValueError, match="^pipe.scheduler.config: _class_name"):
        from diffusers import FlowMatchEulerDiscreteScheduler

        from_pipeline(type("P", (), {"unet": tiny_unet(), "scheduler": FlowMatchEulerDiscreteScheduler()})())


def test_variant_name_is_checked(tmp_path):
    DDPMPipeline(tiny_unet(), scheduler()).save_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match="^variant: "):
        load_diffusion_model(tmp_path / "pipe", variant="../x")
