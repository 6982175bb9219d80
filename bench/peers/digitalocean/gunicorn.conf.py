"""DigitalOcean's Django 1-Click gunicorn settings (droplet-1-clicks django-24-04), as bench/peers/digitalocean/peer.sh
runs them against Kiln's app and settings: gevent workers, 2*CPU+1 of them, recycled after 1000 requests (no jitter).

CPUs: the ones this process may run on (the bench pins the server to one, a 1-vCPU VPS), as Kiln's kiln-gunicorn
counts them (nproc); DigitalOcean's file asks multiprocessing.cpu_count(), which is the same on a real 1-vCPU droplet.
"""

import os

worker_class = "gevent"
workers = 2 * len(os.sched_getaffinity(0)) + 1
max_requests = 1000
bind = "unix:/run/kiln-bench-peer/gunicorn.sock"
