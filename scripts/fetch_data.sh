#!/bin/sh
# Placeholder replaced by the enrichment data fetcher (see docs). Creates the output folder.
mkdir -p third_party/data
