package mlassets;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

/** Runs one task per worker over contiguous row slices; each worker owns its evaluator state. */
final class RowSlices implements AutoCloseable {
    interface SliceTask {
        void run(int worker, int from, int to) throws Exception;
    }

    /** Below this many rows per worker a batch is scored on the calling thread. */
    static final int MIN_ROWS_PER_WORKER = 2048;

    private final int workers;
    private final ExecutorService pool;

    RowSlices(int workers) {
        this.workers = Math.max(1, workers);
        this.pool = this.workers == 1 ? null : Executors.newFixedThreadPool(this.workers, r -> {
            Thread t = new Thread(r, "ml-assets-scorer");
            t.setDaemon(true);
            return t;
        });
    }

    int workers() {
        return workers;
    }

    void run(int n, SliceTask task) throws Exception {
        int parts = Math.min(workers, Math.max(1, n / MIN_ROWS_PER_WORKER));
        if (parts <= 1 || pool == null) {
            task.run(0, 0, n);
            return;
        }
        List<Future<?>> futures = new ArrayList<>(parts);
        int step = (n + parts - 1) / parts;
        for (int p = 0; p < parts; p++) {
            final int worker = p;
            final int from = p * step;
            final int to = Math.min(n, from + step);
            futures.add(pool.submit(() -> {
                task.run(worker, from, to);
                return null;
            }));
        }
        Exception first = null;
        for (Future<?> f : futures) {
            try {
                f.get();
            } catch (ExecutionException e) {
                Throwable cause = e.getCause();
                if (first == null) {
                    first = cause instanceof Exception ? (Exception) cause : new RuntimeException(cause);
                }
            }
        }
        if (first != null) {
            throw first;
        }
    }

    @Override
    public void close() {
        if (pool != null) {
            pool.shutdownNow();
        }
    }
}
