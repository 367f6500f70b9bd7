"""smtk's implementation of the ``sagemaker_training`` Python API (not AWS's package).

Code written against AWS's ``sagemaker-training`` toolkit (framework toolkits such as
``sagemaker-pytorch-training`` and training scripts) imports these modules; each is a
thin layer over smtk's own code, so that code runs unmodified and gets smtk's behaviour:
root-cause failure reasons, signal forwarding, the script's own exit status. What is
covered and what is not: ``docs/migration.md`` in smtk's repository.

Importing the package imports nothing else: each module is imported when asked for.
"""
