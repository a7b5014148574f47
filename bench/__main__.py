"""``python -m bench``: every benchmark, figures as ratios against a same-run baseline."""

from bench import agent, fleet, history, persistence

if __name__ == "__main__":
    persistence.main()
    print()
    history.main([])
    print()
    agent.main()
    print()
    fleet.main([])
