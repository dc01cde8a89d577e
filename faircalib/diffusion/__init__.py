"""Diffusion samplers (LLaDA, Dream, Fast-dLLM threshold, FAIR-Calib probe) and the `Trajectory` they record."""
from faircalib.diffusion.config import SAMPLERS, SamplerConfig
from faircalib.diffusion.denoiser import Denoiser, as_denoiser
from faircalib.diffusion.generate import GenerationOutput, generate
from faircalib.diffusion.trajectory import Trajectory

__all__ = ["SAMPLERS", "Denoiser", "GenerationOutput", "SamplerConfig", "Trajectory", "as_denoiser", "generate"]
