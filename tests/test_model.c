// tests/test_model.c
#include "test.h"

const TestCase tests_model[] = {
    {0, 0},
};
