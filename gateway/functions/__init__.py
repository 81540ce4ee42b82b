"""Local functions: handlers run as in AWS Lambda's Python runtime, each worker its own
process with a memory cap and a deadline. The executor lives in `.executor`; this package
stays light because worker processes import it too."""
