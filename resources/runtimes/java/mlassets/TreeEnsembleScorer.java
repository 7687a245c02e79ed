package mlassets;

/**
 * Scores an ensemble of PMML decision trees flattened into arrays (see resources/_pmml_trees.py).
 *
 * PMML tree semantics: at each node the children are tried in document order and the first
 * whose predicate holds is entered; a leaf yields its class distribution. A row with a missing
 * input, or a tree that yields no prediction, comes back as NaN so the caller can score that row
 * with pmml4s itself, which owns the missing-value strategies.
 */
public final class TreeEnsembleScorer implements AutoCloseable {
    static final byte TRUE = 0, FALSE = 1, LT = 2, LE = 3, GT = 4, GE = 5, EQ = 6, NE = 7;

    private final int[] field;
    private final byte[] op;
    private final double[] value;
    private final int[] firstChild;
    private final int[] nextSibling;
    private final int[] dist;
    private final double[] probs;
    private final int[] roots;
    private final int nClasses;
    private final int nFields;
    private final boolean average;
    private final RowSlices slices;

    public TreeEnsembleScorer(int[] field, byte[] op, double[] value, int[] firstChild, int[] nextSibling,
            int[] dist, double[] probs, int[] roots, int nClasses, int nFields,
            boolean average, int workers) {
        this.field = field;
        this.op = op;
        this.value = value;
        this.firstChild = firstChild;
        this.nextSibling = nextSibling;
        this.dist = dist;
        this.probs = probs;
        this.roots = roots;
        this.nClasses = nClasses;
        this.nFields = nFields;
        this.average = average;
        this.slices = new RowSlices(workers);
    }

    private static boolean holds(byte o, double x, double v) {
        switch (o) {
            case TRUE: return true;
            case FALSE: return false;
            case LT: return x < v;
            case LE: return x <= v;
            case GT: return x > v;
            case GE: return x >= v;
            case EQ: return x == v;
            default: return x != v;
        }
    }

    /** Index of the tree's class distribution for the row; negative when pmml4s must decide. */
    private int leaf(int root, double[] row) {
        int node = root;
        if (!holds(op[node], field[node] < 0 ? 0 : row[field[node]], value[node])) {
            return -1;
        }
        while (true) {
            int child = firstChild[node];
            if (child < 0) {
                return dist[node];
            }
            int chosen = -1;
            for (int c = child; c >= 0; c = nextSibling[c]) {
                if (holds(op[c], field[c] < 0 ? 0 : row[field[c]], value[c])) {
                    chosen = c;
                    break;
                }
            }
            if (chosen < 0) {
                return -2;
            }
            node = chosen;
        }
    }

    /**
     * Reads n rows, column-major native-order doubles, from {@code in}; writes n * nClasses
     * probabilities, row-major, into {@code outBuffer}. NaN rows are left to pmml4s.
     */
    public synchronized void score(java.nio.ByteBuffer in, java.nio.ByteBuffer outBuffer, int n) throws Exception {
        final java.nio.DoubleBuffer columns = in.order(java.nio.ByteOrder.nativeOrder()).asDoubleBuffer();
        final java.nio.DoubleBuffer out = outBuffer.order(java.nio.ByteOrder.nativeOrder()).asDoubleBuffer();
        slices.run(n, (worker, from, to) -> {
            double[] row = new double[nFields];
            double[] acc = new double[nClasses];
            rows:
            for (int i = from; i < to; i++) {
                for (int j = 0; j < nFields; j++) {
                    double x = columns.get(j * n + i);
                    if (Double.isNaN(x)) {
                        missing(out, i);
                        continue rows;
                    }
                    row[j] = x;
                }
                java.util.Arrays.fill(acc, 0.0);
                for (int t = 0; t < roots.length; t++) {
                    int d = leaf(roots[t], row);
                    if (d < 0) {
                        missing(out, i);
                        continue rows;
                    }
                    int base = d * nClasses;
                    for (int k = 0; k < nClasses; k++) {
                        acc[k] += probs[base + k];
                    }
                }
                for (int k = 0; k < nClasses; k++) {
                    out.put(i * nClasses + k, average ? acc[k] / roots.length : acc[k]);
                }
            }
        });
    }

    private void missing(java.nio.DoubleBuffer out, int i) {
        for (int k = 0; k < nClasses; k++) {
            out.put(i * nClasses + k, Double.NaN);
        }
    }

    @Override
    public void close() {
        slices.close();
    }
}
