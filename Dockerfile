# MAX-Whisper on an NVIDIA GPU box: the app (or any `maxwhisper` command) with MAX, openai-whisper and
# faster-whisper on CUDA, and MAX's GPU graphs compiled while the image builds, on the build machine's
# CPU, so that a container's first transcript loads them instead of compiling for minutes
# (docs/usage.md, "A GPU box").
#
#   docker build -t maxwhisper-gpu .                              # graphs for H100/H200 (sm_90)
#   docker build --build-arg ARCHS=sm_80,sm_86,sm_89,sm_90 -t maxwhisper-gpu .
#   docker run --gpus all -p 7860:7860 maxwhisper-gpu             # the app on http://localhost:7860
#
# MAX 26.7 needs an NVIDIA driver 580 or newer (CUDA 13) on the host; CTranslate2, under
# faster-whisper, loads CUDA 12's cuBLAS, which pip installs beside it.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ARG ARCHS=sm_90
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    MODULAR_TELEMETRY_ENABLED=0 MODULAR_CACHE_DIR=/opt/maxwhisper/cache \
    GRADIO_SERVER_NAME=0.0.0.0 PATH=/opt/maxwhisper/venv/bin:$PATH

RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/maxwhisper/app
COPY . .
# what `bash setup.sh --gpu` installs, without its driver check: there is no GPU while an image builds
RUN python3 -m venv /opt/maxwhisper/venv \
    && pip install -q torch==2.13.0 nvidia-cublas-cu12 nvidia-cudnn-cu12 \
    && pip install -q ".[app,serve]" -r requirements-multilingual.txt
# every GPU graph of tiny.en and base, fp32 and fp16, compiled for virtual GPUs of ARCHS
RUN maxwhisper warm --device gpu --arch "$ARCHS" --model tiny.en,base --precision fp32,fp16

EXPOSE 7860
CMD ["python3", "app.py"]
