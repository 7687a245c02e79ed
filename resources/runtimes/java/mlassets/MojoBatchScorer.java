package mlassets;

import hex.genmodel.GenModel;
import hex.genmodel.MojoModel;
import hex.genmodel.algos.tree.SharedTreeMojoModel;
import hex.genmodel.algos.tree.SharedTreeNode;
import hex.genmodel.algos.tree.SharedTreeSubgraph;
import java.lang.reflect.Field;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.DoubleBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

/**
 * Scores an H2O MOJO over a column-major batch of doubles read in place from Python memory.
 *
 * The caller encodes enum columns as indexes into the MOJO's domains (NaN for missing or
 * unseen levels), exactly what EasyPredictModelWrapper.fillRawData produces. Rows then go
 * through GenModel.score0 as EasyPredictModelWrapper does, so predictions are H2O's own.
 *
 * For tree models (GBM, DRF) whose splits are all numeric, {@link #compileTrees} flattens the
 * trees into arrays once; scoring then walks the arrays, adds the leaf values in the order
 * SharedTreeMojoModel.scoreTreeRange adds them, and hands the sums to the model's own
 * unifyPreds. It is used only after it matched score0 bit for bit on rows placed on, beside
 * and between every split value.
 */
public final class MojoBatchScorer implements AutoCloseable {
    private final GenModel[] models;
    private final RowSlices slices;
    private final int nFeatures;
    private final int nPreds;
    // Flattened trees: node arrays over all trees; trees listed with the preds slot they add to.
    private int[] col;
    private double[] split;
    private boolean[] naLeft;
    private boolean[] naVsRest;
    private int[] left;
    private int[] right;
    private double[] leaf;
    private int[] roots;
    private int[] slot;

    public MojoBatchScorer(String path, int workers) throws java.io.IOException {
        int k = Math.max(1, workers);
        models = new GenModel[k];
        for (int i = 0; i < k; i++) {
            models[i] = MojoModel.load(path);
        }
        slices = new RowSlices(k);
        nFeatures = models[0].nfeatures();
        nPreds = models[0].getPredsSize();
    }

    public String category() {
        return models[0].getModelCategory().toString();
    }

    public String[] featureNames() {
        String[] all = models[0].getNames();
        String[] out = new String[nFeatures];
        System.arraycopy(all, 0, out, 0, nFeatures);
        return out;
    }

    /** The levels of feature {@code i}, or null for a numeric feature. */
    public String[] domain(int i) {
        return models[0].getDomainValues(i);
    }

    public String[] responseDomain() {
        return models[0].getDomainValues(models[0].getResponseIdx());
    }

    public int predsSize() {
        return nPreds;
    }

    public boolean compiled() {
        return roots != null;
    }

    private static Object field(Object target, String name) throws ReflectiveOperationException {
        for (Class<?> c = target.getClass(); c != null; c = c.getSuperclass()) {
            try {
                Field f = c.getDeclaredField(name);
                f.setAccessible(true);
                return f.get(target);
            } catch (NoSuchFieldException e) {
                // look in the superclass
            }
        }
        throw new NoSuchFieldException(name);
    }

    /** Flattens the trees; returns null when done and verified, else why the MOJO is scored by score0. */
    public synchronized String compileTrees(int verifyRows) {
        if (!(models[0] instanceof SharedTreeMojoModel)) {
            return "not a tree model";
        }
        SharedTreeMojoModel m = (SharedTreeMojoModel) models[0];
        if (m._offsetColumn != null) {
            return "the model has an offset column";
        }
        List<Integer> colL = new ArrayList<>();
        List<Double> splitL = new ArrayList<>();
        List<Boolean> naLeftL = new ArrayList<>();
        List<Boolean> naVsRestL = new ArrayList<>();
        List<Integer> leftL = new ArrayList<>();
        List<Integer> rightL = new ArrayList<>();
        List<Double> leafL = new ArrayList<>();
        List<Integer> rootL = new ArrayList<>();
        List<Integer> slotL = new ArrayList<>();
        try {
            byte[][] trees = (byte[][]) field(m, "_compressed_trees");
            byte[][] aux = (byte[][]) field(m, "_compressed_trees_aux");
            int groups = m.getNTreeGroups();
            int perGroup = m.getNTreesPerGroup();
            int nclasses = (Integer) field(m, "_nclasses");
            String[] names = m.getNames();
            String[][] domains = m.getDomainValues();
            // scoreTreeRange: for each class i, for each group j: preds[k] += tree(j, i)
            for (int i = 0; i < perGroup; i++) {
                int k = nclasses == 1 ? 0 : i + 1;
                for (int j = 0; j < groups; j++) {
                    int index = i * groups + j;
                    if (trees[index] == null) {
                        continue;
                    }
                    SharedTreeSubgraph g = SharedTreeMojoModel.computeTreeGraph(
                            index, "t", trees[index], aux[index], names, domains);
                    int root = add(g.rootNode, colL, splitL, naLeftL, naVsRestL, leftL, rightL, leafL, domains);
                    if (root < 0) {
                        return "a categorical (bitset) split";
                    }
                    rootL.add(root);
                    slotL.add(k);
                }
            }
        } catch (ReflectiveOperationException | RuntimeException e) {
            return "cannot read the trees: " + e;
        }
        int n = colL.size();
        col = new int[n];
        split = new double[n];
        naLeft = new boolean[n];
        naVsRest = new boolean[n];
        left = new int[n];
        right = new int[n];
        leaf = new double[n];
        for (int i = 0; i < n; i++) {
            col[i] = colL.get(i);
            split[i] = splitL.get(i);
            naLeft[i] = naLeftL.get(i);
            naVsRest[i] = naVsRestL.get(i);
            left[i] = leftL.get(i);
            right[i] = rightL.get(i);
            leaf[i] = leafL.get(i);
        }
        roots = rootL.stream().mapToInt(Integer::intValue).toArray();
        slot = slotL.stream().mapToInt(Integer::intValue).toArray();
        String disagreement = verify(verifyRows);
        if (disagreement != null) {
            roots = null;
            return disagreement;
        }
        return null;
    }

    private static int add(SharedTreeNode node, List<Integer> colL, List<Double> splitL, List<Boolean> naLeftL,
            List<Boolean> naVsRestL, List<Integer> leftL, List<Integer> rightL, List<Double> leafL,
            String[][] domains) {
        int id = colL.size();
        colL.add(-1);
        splitL.add(0.0);
        naLeftL.add(false);
        naVsRestL.add(false);
        leftL.add(-1);
        rightL.add(-1);
        leafL.add(0.0);
        if (node.isLeaf()) {
            leafL.set(id, (double) node.getLeafValue());
            return id;
        }
        int c = node.getColId();
        if (node.isBitset() || (domains[c] != null)) {
            return -1;
        }
        colL.set(id, c);
        splitL.set(id, (double) node.getSplitValue());
        naLeftL.set(id, node.isLeftward());
        naVsRestL.set(id, node.isNaVsRest());
        int l = add(node.getLeftChild(), colL, splitL, naLeftL, naVsRestL, leftL, rightL, leafL, domains);
        if (l < 0) {
            return -1;
        }
        int r = add(node.getRightChild(), colL, splitL, naLeftL, naVsRestL, leftL, rightL, leafL, domains);
        if (r < 0) {
            return -1;
        }
        leftL.set(id, l);
        rightL.set(id, r);
        return id;
    }

    private double[] scoreFlat(GenModel m, double[] row, double[] preds) {
        java.util.Arrays.fill(preds, 0.0);
        for (int t = 0; t < roots.length; t++) {
            int node = roots[t];
            while (col[node] >= 0) {
                double d = row[col[node]];
                boolean goRight = Double.isNaN(d) ? !naLeft[node] : (!naVsRest[node] && d >= split[node]);
                node = goRight ? right[node] : left[node];
            }
            preds[slot[t]] += leaf[node];
        }
        return ((SharedTreeMojoModel) m).unifyPreds(row, 0.0, preds);
    }

    private String verify(int rows) {
        GenModel m = models[0];
        Random random = new Random(42);
        double[][] thresholds = new double[nFeatures][];
        for (int j = 0; j < nFeatures; j++) {
            List<Double> values = new ArrayList<>();
            for (int i = 0; i < col.length; i++) {
                if (col[i] == j) {
                    values.add(split[i]);
                }
            }
            thresholds[j] = values.stream().mapToDouble(Double::doubleValue).toArray();
        }
        double[] row = new double[nFeatures];
        double[] a = new double[nPreds];
        double[] b = new double[nPreds];
        for (int r = 0; r < rows; r++) {
            for (int j = 0; j < nFeatures; j++) {
                double[] t = thresholds[j];
                double base = t.length == 0 ? 0.0 : t[random.nextInt(t.length)];
                switch (random.nextInt(7)) {
                    case 0: row[j] = base; break;
                    case 1: row[j] = Math.nextUp(base); break;
                    case 2: row[j] = Math.nextDown(base); break;
                    case 3: row[j] = Double.NaN; break;
                    case 4: row[j] = base + random.nextGaussian() * 0.01; break;
                    default: row[j] = base + random.nextGaussian() * 2.0; break;
                }
            }
            java.util.Arrays.fill(b, 0.0);
            double[] want = m.score0(row.clone(), b);
            double[] got = scoreFlat(m, row.clone(), a);
            for (int k = 0; k < nPreds; k++) {
                if (Double.doubleToLongBits(want[k]) != Double.doubleToLongBits(got[k])) {
                    return "the flattened trees disagree with score0 (row " + r + ", output " + k + ")";
                }
            }
        }
        return null;
    }

    /**
     * Scores n rows given column-major in {@code in} (native-order doubles); writes n * predsSize
     * doubles, row-major, into {@code out}.
     */
    public synchronized void score(ByteBuffer in, ByteBuffer out, int n) throws Exception {
        final DoubleBuffer columns = in.order(ByteOrder.nativeOrder()).asDoubleBuffer();
        final DoubleBuffer result = out.order(ByteOrder.nativeOrder()).asDoubleBuffer();
        final boolean flat = roots != null;
        slices.run(n, (worker, from, to) -> {
            GenModel m = models[worker];
            double[] row = new double[nFeatures];
            double[] preds = new double[nPreds];
            for (int i = from; i < to; i++) {
                for (int j = 0; j < nFeatures; j++) {
                    row[j] = columns.get(j * n + i);
                }
                double[] p;
                if (flat) {
                    p = scoreFlat(m, row, preds);
                } else {
                    java.util.Arrays.fill(preds, 0.0);
                    p = m.score0(row, preds);
                }
                for (int k = 0; k < nPreds; k++) {
                    result.put(i * nPreds + k, p[k]);
                }
            }
        });
    }

    @Override
    public void close() {
        slices.close();
    }
}
