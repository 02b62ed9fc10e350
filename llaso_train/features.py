"""Whisper log-mel features computed on the training device.

`WhisperLogMel` turns a zero-padded batch of 16 kHz waveform chunks into the
(C, n_mels, 3000) log-mel input of the HF ``WhisperEncoder``. It reproduces
``transformers.WhisperFeatureExtractor(feature_size=n_mels)`` (its torch path,
``_torch_extract_fbank_features``, with the default ``padding="max_length"``,
``truncation=True``, ``dither=0.0``, ``do_normalize=False``) so that features can be
computed on the GPU next to the model instead of in the data loader.
"""

from __future__ import annotations

import torch
from transformers.audio_utils import mel_filter_bank

from llaso_data.frontend import CHUNK_SECONDS, PCM16_SCALE, SAMPLE_RATE

__all__ = ["WhisperLogMel", "float_chunks"]


def float_chunks(chunks: torch.Tensor) -> torch.Tensor:
    """A batch's ``chunks`` (C, N) (int16 PCM or float32, on any device) as float32 in
    [-1, 1]: int16 becomes ``x / 32768`` exactly (every int16 is a float32, and the scale is
    a power of 2), the float32 soundfile would have decoded."""
    if chunks.dtype == torch.int16:
        return chunks.to(torch.float32) * PCM16_SCALE
    return chunks.to(torch.float32)


class WhisperLogMel(torch.nn.Module):
    """(C, S) float32 waveforms at 16 kHz (zero-padded; lengths given) -> (C, n_mels, 3000) log-mel,
    each chunk zero-padded to 30 s (480,000 samples) exactly as WhisperFeatureExtractor pads, so the
    HF WhisperEncoder (which requires 3000 frames) accepts it.

    * Samples at or beyond ``lengths[i]`` are treated as zeros (they may hold garbage, even NaN).
    * Chunks longer than ``chunk_seconds`` are truncated, as the extractor's ``truncation=True`` does.
    * Computation is float32 with autocast disabled, whatever the input dtype or the caller's
      autocast context; the output is float32 (casting to the model's dtype is the caller's job).
    * Nothing requires grad: the input is detached and no parameters exist. The mel filter bank
      and the hann window are non-persistent buffers: they follow ``.to(device)`` but are not
      saved in ``state_dict``. If a dtype cast of the whole model (``model.to(torch.bfloat16)``)
      reaches them, forward restores the exact float32 values on the buffers' device.
    * The input is moved to the buffers' device (move the module with the model).
    """

    mel_filters: torch.Tensor
    window: torch.Tensor

    def __init__(
        self,
        n_mels: int = 128,
        sampling_rate: int = SAMPLE_RATE,
        n_fft: int = 400,
        hop_length: int = 160,
        chunk_seconds: int = int(CHUNK_SECONDS),
    ) -> None:
        super().__init__()
        self.n_mels = int(n_mels)
        self.sampling_rate = int(sampling_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.chunk_seconds = int(chunk_seconds)
        self.n_samples = self.chunk_seconds * self.sampling_rate  # 480,000
        self.n_frames = self.n_samples // self.hop_length  # 3,000
        # Same arguments as WhisperFeatureExtractor.__init__ (max_frequency is a fixed 8000.0 there).
        filters = mel_filter_bank(
            num_frequency_bins=1 + self.n_fft // 2,
            num_mel_filters=self.n_mels,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=self.sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # (n_freq, n_mels) float64
        # The extractor casts to float32 and computes mel_filters.T @ magnitudes.
        mel = torch.from_numpy(filters).to(torch.float32).T.contiguous()  # (n_mels, n_freq)
        # The extractor's torch path uses torch.hann_window(n_fft): periodic=True.
        window = torch.hann_window(self.n_fft, dtype=torch.float32)
        self.register_buffer("mel_filters", mel, persistent=False)
        self.register_buffer("window", window, persistent=False)
        # Plain-attribute CPU masters (not buffers, so .to() leaves them alone): restore exact
        # float32 buffers if someone casts the whole model, e.g. model.to(torch.bfloat16).
        self._masters = {"mel_filters": mel.clone(), "window": window.clone()}

    def extra_repr(self) -> str:
        return (
            f"n_mels={self.n_mels}, sampling_rate={self.sampling_rate}, n_fft={self.n_fft}, "
            f"hop_length={self.hop_length}, chunk_seconds={self.chunk_seconds}"
        )

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be (C, S), got shape {tuple(waveforms.shape)}")
        device = self.mel_filters.device
        for name, master in self._masters.items():
            if getattr(self, name).dtype != torch.float32:
                setattr(self, name, master.to(device))
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            x = waveforms.detach().to(device=device, dtype=torch.float32)
            num_chunks, num_samples = x.shape
            if lengths is not None:
                lengths = torch.as_tensor(lengths, device=device).reshape(-1).to(torch.long)
                if lengths.numel() != num_chunks:
                    raise ValueError(f"lengths has {lengths.numel()} entries for {num_chunks} waveforms")
                keep = torch.arange(num_samples, device=device)[None, :] < lengths[:, None]
                # where, not multiply: garbage may be NaN/inf.
                x = torch.where(keep, x, x.new_zeros(()))
            # Pad with zeros / truncate to exactly n_samples, as the extractor's pad() does.
            if num_samples >= self.n_samples:
                x = x[:, : self.n_samples]
            else:
                x = torch.nn.functional.pad(x, (0, self.n_samples - num_samples))
            x = x.contiguous()

            # Mirrors WhisperFeatureExtractor._torch_extract_fbank_features (center=True, reflect pad).
            stft = torch.stft(
                x,
                self.n_fft,
                self.hop_length,
                window=self.window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )  # (C, n_freq, n_frames + 1)
            magnitudes = (stft[..., :-1].abs() ** 2).contiguous()
            mel_spec = self.mel_filters @ magnitudes  # (C, n_mels, n_frames)
            log_spec = torch.clamp(mel_spec, min=1e-10).log10()
            max_val = log_spec.amax(dim=(1, 2), keepdim=True)  # per chunk, not per batch
            log_spec = torch.maximum(log_spec, max_val - 8.0)
            return (log_spec + 4.0) / 4.0

    @staticmethod
    def valid_frames(lengths: torch.Tensor, hop_length: int = 160) -> torch.Tensor:
        """Encoder input frames that hold real audio per chunk: ceil(len / hop_length).

        This is the count ``WhisperFeatureExtractor``'s ``attention_mask`` (sampled every
        ``hop_length`` samples) marks as valid. Pass lengths already clamped to the chunk size
        (forward truncates longer chunks to 480,000 samples = 3,000 frames). The Whisper encoder
        halves the frame rate (stride-2 conv), so encoder outputs holding audio are
        ceil(valid_frames / 2).
        """
        lengths = torch.as_tensor(lengths).to(torch.long)
        return torch.div(lengths + (hop_length - 1), hop_length, rounding_mode="floor")
