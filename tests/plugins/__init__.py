"""Extensions written outside the mwork package, as a user would, each in one file."""
