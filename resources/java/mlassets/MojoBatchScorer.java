package mlassets;

import hex.genmodel.GenModel;
import hex.genmodel.MojoModel;

/**
 * Scores an H2O MOJO over a column-major batch of doubles.
 *
 * The caller encodes enum columns as indexes into the MOJO's domains (NaN for missing or
 * unseen levels), exactly what EasyPredictModelWrapper.fillRawData produces, then each row
 * goes through GenModel.score0 as EasyPredictModelWrapper does, so predictions are H2O's own.
 */
public final class MojoBatchScorer implements AutoCloseable {
    private final GenModel[] models;
    private final RowSlices slices;
    private final int nFeatures;
    private final int nPreds;

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

    public String responseName() {
        return models[0].getResponseName();
    }

    public int predsSize() {
        return nPreds;
    }

    /** Returns n * predsSize doubles, row-major, for n rows given column-major. */
    public double[] score(double[] columns, int n) throws Exception {
        final double[] out = new double[n * nPreds];
        slices.run(n, (worker, from, to) -> {
            GenModel m = models[worker];
            double[] row = new double[nFeatures];
            double[] preds = new double[nPreds];
            for (int i = from; i < to; i++) {
                for (int j = 0; j < nFeatures; j++) {
                    row[j] = columns[j * n + i];
                }
                java.util.Arrays.fill(preds, 0.0);
                double[] result = m.score0(row, preds);
                System.arraycopy(result, 0, out, i * nPreds, nPreds);
            }
        });
        return out;
    }

    @Override
    public void close() {
        slices.close();
    }
}
