"""The TPU planner: the real train step compiled for a TPU topology on this CPU-only machine."""

import jax
import numpy as np
import pytest

from maskfeat_jax import defaults
from maskfeat_jax.planning import chips, flops, hlo, roofline
from maskfeat_jax.planning.report import format_report

pytest.importorskip("libtpu", reason="planning needs libtpu (requirements-plan.txt)")


def tiny_config(batch=32):
    c = defaults.pretrain_config()
    c.model.update(variant="B/16", image_size=64, width=128, depth=2, num_heads=4, mlp_dim=256)
    c.model.dtype = "bfloat16"
    c.input.batch_size = batch
    c.total_steps = 1000
    c.optim.warmup_steps = 10
    return c


def test_topology_names():
    assert chips.parse_topology("v5e:16x16") == ("v5e", (16, 16))
    assert chips.parse_topology("v4:4x4x4") == ("v4", (4, 4, 4))
    with pytest.raises(chips.PlanError, match="v5e:16x16"):
        chips.parse_topology("v5litepod-256")


LOOP_HLO = """HloModule m

%body (p: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %ag = bf16[32,128]{1,0} all-gather(bf16[8,128]{1,0} %x), replica_groups=[1,4]<=[4]
  %rs = bf16[8,128]{1,0} reduce-scatter(bf16[32,128]{1,0} %y), replica_groups=[1,4]<=[4]
}

%cond (p: (s32[], bf16[8,128])) -> pred[] {
  %n = s32[] constant(24)
  ROOT %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

ENTRY %main (a: bf16[8,128]) -> f32[] {
  %w = (s32[], bf16[8,128]) while(%t), condition=%cond, body=%body
  %ar = f32[1000]{0} all-reduce(f32[1000]{0} %g), replica_groups={{0,1,2,3}}, to_apply=%add
}
"""


def test_collectives_inside_loops_count_once_per_trip():
    got = hlo.collective_bytes(LOOP_HLO, 4)
    full = 32 * 128 * 2  # the gathered array, bytes
    np.testing.assert_allclose(got["all-gather"], 24 * full * 3 / 4)
    np.testing.assert_allclose(got["reduce-scatter"], 24 * (8 * 128 * 2) * 3)
    np.testing.assert_allclose(got["all-reduce"], 2 * 4000 * 3 / 4)
    # XLA's own trip count wins where it gives one.
    known = LOOP_HLO.replace(
        "body=%body", 'body=%body, backend_config={"known_trip_count":{"n":"6"}}'
    )
    np.testing.assert_allclose(hlo.collective_bytes(known, 4)["all-gather"], 6 * full * 3 / 4)


@pytest.fixture(scope="module", autouse=True)
def compiled_once():
    """The tests here plan the same few programs with different figures around them (a chip
    of another size, an HLO printer that fails): each program is compiled once per module.
    Compiling does not depend on the chip figures, only on the config and the devices."""
    programs = {}
    compile_program = roofline._compile

    def cached(config, mesh, chip):
        key = (config.to_json(), tuple(d.id for d in mesh.devices.flat), mesh.axis_names)
        if key not in programs:
            programs[key] = compile_program(config, mesh, chip)
        return programs[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(roofline, "_compile", cached)
        yield


@pytest.fixture(scope="module")
def slice_plan():
    """The tiny config planned on a v5e:2x2 slice (compiled once for the tests that read it)."""
    return roofline.plan(tiny_config(), "v5e:2x2")


@pytest.mark.slow
def test_plan_compiles_the_train_step_for_a_tpu_slice(slice_plan):
    result = slice_plan
    assert result["chips"] == 4 and result["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    hbm = result["hbm_bytes"]
    assert hbm["arguments"] > 0 and hbm["temporaries"] > 0
    assert 0 < result["hbm_fraction"] < 0.5
    # Model FLOPs: 3 x the forward pass, ~6 x parameters x tokens for a ViT. XLA's count of
    # this tiny model sits at 0.78 of that (its elementwise share depends on how GELU is
    # written); a count of the backward as forward, or a lost factor of 3, falls outside.
    params = 2 * (12 * 128 * 128) + 16 * 16 * 3 * 128  # blocks + patch embedding (matmuls)
    tokens = 32 * 17
    assert 0.6 < result["model_flops_per_step"] / (6 * params * tokens) < 1.6
    # FSDP gathers parameters and reduces gradients over the 4 chips.
    assert result["collective_bytes_per_chip"].get("all-gather", 0) > 0
    assert 0 < result["mfu_serial"] <= result["mfu_overlapped"] <= 1
    assert result["seconds"]["step_serial"] >= result["seconds"]["step_overlapped"]
    # Where the HBM traffic comes from, by Python function; the re-count of HBM-resident
    # buffers stays below XLA's count of every operand (this tiny model mostly fits on chip).
    traffic = result["hbm_bytes_by_source"]
    assert any(k.startswith("normalize (forward)") for k in traffic), traffic
    assert 0 < result["hbm_bytes_recounted"] <= result["bytes_accessed_per_chip"]
    assert result["seconds"]["hbm_recount"] <= result["seconds"]["hbm"]
    report = format_report(result)
    assert "HBM traffic by source" in report
    assert "projection, not a measurement" in report and "HBM per chip" in report


@pytest.mark.slow
def test_a_config_that_does_not_fit_names_the_knobs(monkeypatch):
    small = chips.Chip("TPU v5e", 197e12, 2**20, 819e9, 200e9)  # a 1 MiB chip
    monkeypatch.setitem(chips.CHIPS, "v5e", small)
    config = tiny_config()
    with pytest.raises(chips.PlanError) as err:
        roofline.plan(config, "v5e:2x2")
    message = str(err.value)
    for knob in ("model.remat=True", "input.batch_size", "--config.mesh"):
        assert knob in message


@pytest.mark.slow
def test_multi_slice_mesh_keeps_fsdp_inside_a_slice_and_plans():
    from maskfeat_jax import sharding

    devices = chips.topology_devices("v5e:2x2", num_slices=2)
    assert len(devices) == 8 and sharding.num_slices(devices) == 2
    mesh = sharding.make_mesh(defaults.FSDP_MESH, devices=devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    for row in mesh.devices.reshape(2, 4):  # one data index = one whole slice
        assert len({d.slice_index for d in row}) == 1
    with pytest.raises(ValueError, match="no 'data' axis"):
        sharding.make_mesh((("fsdp", -1),), devices=devices)
    with pytest.raises(ValueError, match="per slice"):
        sharding.make_mesh((("data", 1), ("fsdp", 8)), devices=devices)
    result = roofline.plan(tiny_config(), "v5e:2x2", num_slices=2)
    assert result["chips"] == 8 and result["mesh"]["data"] == 2
    assert "multi-slice" in format_report(result)


@pytest.mark.slow
def test_scanned_blocks_take_costs_from_the_unrolled_step(slice_plan):
    unrolled = slice_plan
    config = tiny_config()
    config.model.scan = True
    scanned = roofline.plan(config, "v5e:2x2")
    np.testing.assert_allclose(scanned["flops_per_chip"], unrolled["flops_per_chip"], rtol=0.02)
    # The scanned program's collectives are counted once per layer, like the unrolled ones.
    np.testing.assert_allclose(
        sum(scanned["collective_bytes_per_chip"].values()),
        sum(unrolled["collective_bytes_per_chip"].values()),
        rtol=0.25,
    )


def test_xla_refusing_to_compile_for_lack_of_hbm_names_the_knobs():
    config = tiny_config(batch=4096)  # 1024 ViT-B-sized images per chip
    config.model.update(image_size=224, width=512, depth=1, num_heads=8, mlp_dim=2048)
    with pytest.raises(chips.PlanError, match=r"needs [\d.]+GB for HLO temporaries") as err:
        roofline.plan(config, "v5e:2x2")
    assert "model.remat=True" in str(err.value) and "1024 per chip" in str(err.value)


def test_v4_is_planned_one_device_per_chip():
    devices = chips.topology_devices("v4:2x2x2")
    assert len(devices) == 8  # chips, not TensorCores (JAX's megacore devices on v4)
    assert {d.core_on_chip for d in devices} == {0}


@pytest.mark.slow
def test_an_unprintable_program_falls_back_to_the_fsdp_estimate(monkeypatch):
    def refuse(compiled):
        return None, "JaxRuntimeError: RET_CHECK failure"

    monkeypatch.setattr(roofline, "_hlo_text", refuse)
    result = roofline.plan(tiny_config(), "v5e:2x2")
    ((kind, moved),) = result["collective_bytes_per_chip"].items()
    assert kind.startswith("FSDP estimate") and moved > 0
    assert result["collectives_from"].startswith("estimate (JaxRuntimeError")
    assert "from the estimate" in format_report(result)


TRAFFIC_HLO = """HloModule m

FileNames
1 "model.py"

FunctionNames
1 "Mlp.__call__"

FileLocations
1 {file_name_id=1 function_name_id=1 line=1 end_line=1 column=1 end_column=2}

StackFrames
1 {file_location_id=1 parent_frame_id=1}

ENTRY %main (p: bf16[1024,1024]) -> bf16[1024,1024] {
  %p = bf16[1024,1024]{1,0} parameter(0)
  %cs = (bf16[1024,1024]{1,0}, bf16[1024,1024]{1,0:S(1)}, u32[]{:S(2)}) copy-start(%p)
  %cd = bf16[1024,1024]{1,0:S(1)} copy-done(%cs)
  ROOT %f = bf16[1024,1024]{1,0} fusion(%cd), kind=kLoop, calls=%fused, metadata={op_name="jit(f)/transpose(jvp())/mul" stack_frame_id=1}
}
"""


def test_hbm_traffic_counts_hbm_buffers_once_and_names_their_source():
    mib2 = 1024 * 1024 * 2
    traffic = hlo.hbm_bytes_by_source(TRAFFIC_HLO)
    # The prefetch reads the parameter from HBM into on-chip memory (S(1)); the fusion then
    # reads on-chip and writes its result to HBM.
    assert traffic["Mlp.__call__ (backward)"] == mib2
    assert abs(traffic["(copy-start, no source)"] - mib2) <= 4


def test_model_flops_have_the_head_of_the_target():
    hog_config = tiny_config()
    pixel_config = tiny_config()
    pixel_config.target = "pixels"
    hog_flops = flops.model_flops_per_step(hog_config)
    pixel_flops = flops.model_flops_per_step(pixel_config)
    # Only the head's width differs: 3 x 16 x 16 pixel values per token instead of 108 HOG
    # features, each output a multiply-add per input plus its bias, in 3 passes. XLA also
    # counts the head's dtype conversions (bf16 weights, float32 outputs): under 1 % more.
    width, tokens, batch = 128, (64 // 16) ** 2, 32
    extra_outputs = 3 * 16 * 16 - 108
    head = 3 * batch * tokens * extra_outputs * (2 * width + 1)
    assert head <= pixel_flops - hog_flops <= 1.01 * head


def test_plans_stay_out_of_the_persistent_compilation_cache():
    """A TPU program compiled from a topology description cannot be read back without the
    chips, so the planner's compiles write no cache entry (infinite time threshold), and the
    user's threshold comes back afterwards, also after an error."""
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    with pytest.raises(RuntimeError, match="inside"):
        with roofline._kept_out_of_the_compilation_cache():
            assert jax.config.jax_persistent_cache_min_compile_time_secs == float("inf")
            raise RuntimeError("inside")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == before
