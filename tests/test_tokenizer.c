// tests/test_tokenizer.c
#include "test.h"

const TestCase tests_tokenizer[] = {
    {0, 0},
};
