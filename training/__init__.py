"""What training needs and reading does not: the MNIST files, augmentation, the numbers the number
reader learns from, the training loop's machinery and the files a run writes.
"""


